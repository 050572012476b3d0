"""Multi-process training (sdar.distributed) on CPU with gloo: the gathered group statistics, the
gradient of one update on a fixed batch (2 FSDP processes vs 1 process), the loss trajectory of a
torchrun run vs a single-process run on the same rollouts, and checkpoints moving between world sizes —
with a tied LM head (the embedded model) and an untied one (``tie_word_embeddings=False``, Qwen3 ≥ 8B)."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from sdar.algos import group_advantages, pooled_group_advantages
from sdar.distributed import fqn_to_index, index_to_fqn

pytestmark = pytest.mark.timeout(900)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--batch-tasks", "2", "--group-size", "2", "--max-turns", "2", "--max-new-tokens", "12",
        "--eval-every", "0", "--eval-seeds", "0", "--threads", "1", "--no-progress", "--save-every", "1"]
# compared between world sizes: the loss terms and the gradient norm (fp reduction order differs:
# relative 1e-4), and what the rollouts produced (exactly equal: the same tokens were sampled)
LOSS_KEYS = ("pg_loss", "kl", "entropy", "sdar_loss", "logp_mean", "teacher_logp_mean", "gate_mean", "grad_norm",
             "adv_abs_mean", "zero_var_group_frac")
EXACT_KEYS = ("reward", "success", "score", "turns", "invalid_frac", "samples", "response_tokens")


# ----------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_pooled_group_advantages_equal_whole_batch(norm_by_std):
    """Samples of each group dealt to 3 parts at random (some parts without a group's members, one
    singleton group, one zero-variance group): each part's advantages equal the whole batch's."""
    g = torch.Generator().manual_seed(0)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 3])
    rewards = torch.rand(len(groups), generator=g) * 4 - 1
    rewards[groups == 3] = 0.5  # zero variance
    whole, m_whole = group_advantages(rewards, groups, norm_by_std=norm_by_std)
    owner = torch.randint(0, 3, (len(groups),), generator=g)
    idx = [torch.nonzero(owner == k).flatten() for k in range(3)]
    for k in range(3):
        adv, m = pooled_group_advantages([rewards[i] for i in idx], [groups[i] for i in idx], part=k,
                                         norm_by_std=norm_by_std)
        assert adv.shape == (len(idx[k]),)
        torch.testing.assert_close(adv, whole[idx[k]], rtol=1e-6, atol=1e-7)
        assert m == pytest.approx(m_whole)
    assert whole.abs().max() > 0.1  # a non-trivial batch
    with pytest.raises(ValueError, match="part"):
        pooled_group_advantages([rewards], [groups], part=1)


def test_optimizer_state_layout_round_trip():
    """Name-keyed (FSDP full state) ↔ index-keyed (plain optimizer.state_dict()), tied names included."""
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    plain = opt.state_dict()
    pos = {"weight": 0, "bias": 1, "alias.weight": 0}
    named = index_to_fqn(plain, {0: "weight", 1: "bias"})
    assert set(named["state"]) == {"weight", "bias"} and named["param_groups"][0]["params"] == ["weight", "bias"]
    back = fqn_to_index(named, pos)
    assert back["param_groups"] == plain["param_groups"]
    for i in (0, 1):
        assert all(torch.equal(back["state"][i][k], plain["state"][i][k]) for k in plain["state"][i])


# ----------------------------------------------------------------------------- multi-process runs
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sdar.models import ModelSize, init_model

    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("model") / "init")
    init_model(out, episodes=3, max_turns=3, size=ModelSize(vocab_size=512))
    return out


@pytest.fixture(scope="module")
def untied_model(tiny_model, tmp_path_factory):
    """The tiny model with an untied LM head (``tie_word_embeddings=False``, as Qwen3 ≥ 8B): the body
    and tokenizer of ``tiny_model``, the head the embedding plus noise (so a head trained as the
    embedding, or not trained, shows)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, Qwen3ForCausalLM

    out = str(tmp_path_factory.mktemp("model") / "untied")
    shutil.copytree(tiny_model, out)
    cfg = AutoConfig.from_pretrained(tiny_model)
    cfg.tie_word_embeddings = False
    model = Qwen3ForCausalLM(cfg)
    tied = load_file(os.path.join(tiny_model, "model.safetensors"))
    loaded = model.load_state_dict({k: v for k, v in tied.items() if k != "lm_head.weight"}, strict=False)
    assert loaded.missing_keys == ["lm_head.weight"] and not loaded.unexpected_keys
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        model.lm_head.weight.copy_(emb + 0.5 * emb.std() * torch.randn(emb.shape, generator=g))
    model.save_pretrained(out, safe_serialization=True)
    saved = load_file(os.path.join(out, "model.safetensors"))
    assert not torch.equal(saved["lm_head.weight"], saved["model.embed_tokens.weight"])
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(args: list[str], nproc: int = 1) -> None:
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}"]
    proc = subprocess.run(launcher + args, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _train(model_dir, run_dir, steps, *extra, nproc=1):
    _run(["-m", "sdar", "train", "--model-dir", model_dir, "--run-dir", run_dir, "--steps", str(steps), *TINY,
          *extra], nproc)


def _lines(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f if x.strip()]


def _assert_same_step(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for k in EXACT_KEYS:
        assert a[k] == b[k], (a["step"], k, a[k], b[k])
    for k in LOSS_KEYS:
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), (a["step"], k, a[k], b[k])


def test_torchrun_matches_single_process_and_checkpoints_cross_world_sizes(tiny_model, tmp_path):
    """(a) ``torchrun --nproc_per_node=2`` (FSDP2, gloo) with ``--rollout-split replicate`` — both ranks
    play the batch one process plays and train on alternate samples, so groups straddle ranks — logs
    the single-process loss trajectory over 3 steps (relative 1e-4; identical rollouts). (b) Its
    step-3 checkpoint resumes on 1 process and step 4 matches the uninterrupted single-process run.
    (c) A single-process checkpoint resumes under torchrun with the default split rollout."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _train(tiny_model, one, 4, "--rollout-split", "replicate")
    _train(tiny_model, two, 3, "--rollout-split", "replicate", nproc=2)
    a, b = _lines(one), _lines(two)
    assert [x["step"] for x in b] == [1, 2, 3]  # rank 0 alone writes the metrics
    for x, y in zip(a, b):
        _assert_same_step(x, y)
    assert any(x["kl"] > 0 for x in b) and all(x["grad_norm"] > 0 for x in b)
    # (b) 2 processes -> 1 process
    _train(tiny_model, two, 4, "--rollout-split", "replicate", "--resume")
    b = _lines(two)
    assert [x["step"] for x in b] == [1, 2, 3, 4]
    _assert_same_step(a[3], b[3])
    # (c) 1 process -> 2 processes (split rollout: each rank plays one of the 2 tasks)
    resumed = str(tmp_path / "resumed")
    shutil.copytree(one, resumed)
    _train(tiny_model, resumed, 5, "--resume", nproc=2)
    c = _lines(resumed)
    assert [x["step"] for x in c] == [1, 2, 3, 4, 5] and c[:4] == a
    assert c[4]["samples"] > 0 and all(c[4][k] == c[4][k] for k in LOSS_KEYS)  # gathered counts, finite
    from safetensors.torch import load_file

    w4 = load_file(os.path.join(one, "final", "model.safetensors"))
    w5 = load_file(os.path.join(resumed, "final", "model.safetensors"))
    assert w4.keys() == w5.keys() and any(not torch.equal(w4[k], w5[k]) for k in w4)  # step 5 trained


def test_torchrun_untied_head_matches_single_process_and_resumes(untied_model, tmp_path):
    """An untied LM head (``tie_word_embeddings=False``, Qwen3 ≥ 8B) under FSDP: ``torchrun
    --nproc_per_node=2`` with ``--rollout-split replicate`` logs the single-process loss trajectory over
    3 steps (relative 1e-4). Its step-3 checkpoint holds what the single-process one holds — the weights
    with their own ``lm_head.weight`` (trained, still apart from the embedding) and the AdamW moments
    at the same single-process parameter positions. Checkpoints cross world sizes both ways: the
    2-process step-3 checkpoint resumes on 1 process and the 1-process one on 2 processes, and step 4
    matches the uninterrupted single-process run each time."""
    from safetensors.torch import load_file

    from sdar.checkpoint import LATEST

    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    opts = ("--rollout-split", "replicate", "--keep-checkpoints", "4")
    _train(untied_model, one, 4, *opts)
    _train(untied_model, two, 3, *opts, nproc=2)
    a, b = _lines(one), _lines(two)
    assert [x["step"] for x in b] == [1, 2, 3]
    for x, y in zip(a, b):
        _assert_same_step(x, y)
    assert any(x["kl"] > 0 for x in b) and all(x["grad_norm"] > 0 for x in b)
    # the step-3 checkpoints: weights, then the optimizer state position by position
    ck1, ck2 = (os.path.join(r, "checkpoints", "step_000003") for r in (one, two))
    w0 = load_file(os.path.join(untied_model, "model.safetensors"))
    w1, w2 = (load_file(os.path.join(c, "model.safetensors")) for c in (ck1, ck2))
    assert w1.keys() == w2.keys() and "lm_head.weight" in w2
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5, msg=k)  # 3 AdamW steps of lr 2e-4
    head_step = (w2["lm_head.weight"] - w0["lm_head.weight"]).abs().max()
    assert head_step > 1e-4 and not torch.equal(w2["lm_head.weight"], w2["model.embed_tokens.weight"])
    o1, o2 = (torch.load(os.path.join(c, "optimizer.pt"), weights_only=False) for c in (ck1, ck2))
    assert o2["param_groups"][0]["params"] == o1["param_groups"][0]["params"]
    assert o2["state"].keys() == o1["state"].keys()
    for i, s1 in o1["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(o2["state"][i][k], s1[k], rtol=0, atol=1e-4 * float(s1[k].abs().max()),
                                       msg=f"{i} {k}")
    # 2 processes -> 1 process
    _train(untied_model, two, 4, *opts, "--resume")
    b = _lines(two)
    assert [x["step"] for x in b] == [1, 2, 3, 4]
    _assert_same_step(a[3], b[3])
    final = load_file(os.path.join(two, "final", "model.safetensors"))
    assert final.keys() == w0.keys() and not torch.equal(final["lm_head.weight"], w2["lm_head.weight"])
    # 1 process -> 2 processes: the single-process run from its step-3 checkpoint
    resumed = str(tmp_path / "resumed")
    shutil.copytree(one, resumed)
    with open(os.path.join(resumed, "checkpoints", LATEST), "w") as f:
        f.write("step_000003")
    _train(untied_model, resumed, 4, *opts, "--resume", nproc=2)
    c = _lines(resumed)
    assert [x["step"] for x in c] == [1, 2, 3, 4] and c[:3] == a[:3]
    _assert_same_step(a[3], c[3])


WORKER = r'''
import sys
import torch
from sdar import distributed as D
from sdar.config import Config
from sdar.models import load_model
from sdar.rollout import Sample
from sdar.teacher import prepass
from sdar.train import step_advantages, update

torch.set_num_threads(1)
model_dir, out = sys.argv[1], sys.argv[2]
cpu = torch.device("cpu")
D.init_from_env(cpu)
world, rank = D.world_size(), D.rank()
model, _ = load_model(model_dir, device=cpu)
copy, _ = load_model(model_dir, device=cpu, train=False)
ref, _ = load_model(model_dir, device=cpu, train=False)
g = torch.Generator().manual_seed(1)
with torch.no_grad():  # a reference away from the policy: a non-zero KL gradient
    for p in ref.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))
samples = []
for i in range(7):  # 7 samples, 3 groups: ranks hold 4 and 3 samples, every group on both ranks
    prompt = torch.randint(5, 500, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
    resp = torch.randint(5, 500, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
    samples.append(Sample(prompt, resp, [0.0] * len(resp), [7, 8, 9] + prompt, group=i % 3, episode=i, turn=0,
                          valid_format=True, reward=float(torch.rand(1, generator=g))))
mine = samples[rank::world]
adv, _ = step_advantages(mine, norm_by_std=True)  # (N_rank,), statistics gathered over ranks
cfg = Config(model_dir=model_dir, method="sdar", coef=0.5, kl_coef=0.1, entropy_coef=0.01, grad_clip=1e9,
             micro_batch_tokens=40, impl="chunked")
pre = prepass(copy, mine, pad_id=0, device=cpu, max_tokens=cfg.micro_batch_tokens, temperature=1.0, teacher=True,
              ref_model=ref, impl=cfg.impl)
before = {k: v.clone() for k, v in copy.state_dict().items()}
if world > 1:
    D.shard(model)
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)  # Δθ = −gradient
metrics = update(model, opt, mine, pre, adv, cfg, step=0, device=cpu)
after = D.full_state(model) if world > 1 else model.state_dict()
if rank == 0:
    torch.save({"grad": {k: before[k] - after[k] for k in before}, "metrics": metrics}, out)
D.close()
D.exit_distributed_process()  # as `sdar train` does: no interpreter finalization under torchrun
'''


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_one_update_gradient_two_fsdp_processes_equals_one_process(head, request, tmp_path):
    """One SGD(lr=1) step of ``update`` on a fixed batch (PG with non-zero advantages, KL, entropy, SDAR;
    several micro-batches, unequal counts per rank): the 2-process FSDP gradient equals the
    1-process gradient (relative 1e-4 of its largest entry), and so do the logged metrics — with a
    tied LM head and with an untied one (its own gradient, reduce-scattered with the root group)."""
    model_dir = request.getfixturevalue("tiny_model" if head == "tied" else "untied_model")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    _run([str(script), model_dir, str(tmp_path / "g1.pt")])
    _run([str(script), model_dir, str(tmp_path / "g2.pt")], nproc=2)
    g1, g2 = torch.load(tmp_path / "g1.pt"), torch.load(tmp_path / "g2.pt")
    scale = max(float(v.abs().max()) for v in g1["grad"].values())
    assert scale > 1e-3  # a real gradient
    assert g1["grad"].keys() == g2["grad"].keys() and "lm_head.weight" in g1["grad"]
    d_head, d_emb = g1["grad"]["lm_head.weight"], g1["grad"]["model.embed_tokens.weight"]
    assert torch.equal(d_head, d_emb) == (head == "tied") and d_head.abs().max() > 1e-3 * scale
    for k, v in g1["grad"].items():
        torch.testing.assert_close(g2["grad"][k], v, rtol=0, atol=1e-4 * scale, msg=k)
    for k in ("pg_loss", "kl", "entropy", "sdar_loss", "grad_norm"):
        assert g2["metrics"][k] == pytest.approx(g1["metrics"][k], rel=1e-4, abs=1e-7), k
    assert g1["metrics"]["pg_loss"] != 0 and g1["metrics"]["kl"] > 0


@pytest.mark.slow
def test_torchrun_three_processes_split_with_minibatches_and_eval(tiny_model, tmp_path):
    """3 ranks, split rollout (3 tasks: one each), 2 mini-batches × 2 epochs, a sequence-mean
    aggregation, evaluation on rank 0 at the end: the run completes, logs whole-batch counts once per
    step, and its checkpoint resumes on 1 process."""
    run = str(tmp_path / "three")
    extra = ["--batch-tasks", "3", "--mini-batches", "2", "--ppo-epochs", "2", "--agg", "seq-mean-token-mean",
             "--eval-seeds", "2", "--micro-batch-tokens", "64"]
    _train(tiny_model, run, 2, *extra, nproc=3)
    lines = _lines(run)
    assert [x["step"] for x in lines] == [1, 2]
    assert all(x["samples"] >= 3 * 2 for x in lines) and "eval_success" in lines[-1]
    _train(tiny_model, run, 3, *extra, "--resume")
    assert [x["step"] for x in _lines(run)] == [1, 2, 3]
