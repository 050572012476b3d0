"""Step time of SDAR vs GRPO on the embedded model (target: SDAR ≤ 1.3× GRPO; the teacher forward on
the skill-prefixed prompts is the only extra work).

    pytest benchmarks/test_bench_train.py -s -p no:randomly

Two measurements, both on the household ``small`` preset with the embedded Qwen3-architecture model
(d 128, 2 layers, BPE vocabulary 1,024; fp32 on CPU):

- ``trainer``: the training side of a step (θ_old pre-pass + loss/backward/AdamW) on one fixed
  batch of turn-samples with realistic lengths (prompts from expert episodes, 12-token replies),
  GRPO vs SDAR — isolates the teacher forward.
- ``full``: whole steps of ``sdar.train`` (rollout + pre-pass + update) from the same start, same
  task and sampling seeds (identical rollouts at the first step).

Results (with the machine) go to ``benchmarks/results/train_step_<device>.json``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    from sdar.models import init_model

    out = str(tmp_path_factory.mktemp("bench") / "init")
    init_model(out, episodes=40, max_turns=8)
    return out


def _samples(model_dir, n_episodes=16, reply_len=12):
    """Turn-samples from expert episodes: real student/teacher prompts, random 12-token replies."""
    from sdar.models import chat_prompt_ids, load_tokenizer
    from sdar.rollout import Sample
    from sdar.sft import expert_episodes

    tok = load_tokenizer(model_dir)
    gen = torch.Generator().manual_seed(0)
    out = []
    for g, ep in enumerate(expert_episodes("household", preset="small", env_seed=0, n=n_episodes, max_turns=8)):
        for t, turn in enumerate(ep.turns):
            resp = torch.randint(10, len(tok) - 1, (reply_len,), generator=gen).tolist()
            out.append(Sample(chat_prompt_ids(tok, turn.prompt), resp, [0.0] * reply_len,
                              chat_prompt_ids(tok, turn.teacher_prompt), g // 4, g, t, True, float(g % 3)))
    return out


def _trainer_time(model_dir, samples, method, rounds):
    from sdar.algos import group_advantages
    from sdar.config import Config
    from sdar.models import load_model
    from sdar.teacher import prepass
    from sdar.train import update

    cfg = Config(model_dir=model_dir, method=method, kl_coef=0.01)
    model, _ = load_model(model_dir)
    ref, _ = load_model(model_dir, train=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    adv, _ = group_advantages(torch.tensor([s.reward for s in samples]), torch.tensor([s.group for s in samples]))
    times = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        pre = prepass(model, samples, pad_id=model.config.pad_token_id, device=torch.device("cpu"),
                      max_tokens=cfg.micro_batch_tokens, temperature=1.0, teacher=method == "sdar", ref_model=ref)
        update(model, opt, samples, pre, adv, cfg, step=r, device=torch.device("cpu"))
        if r:  # the first round warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _full_step_time(model_dir, run_dir, method, steps):
    from sdar.config import Config
    from sdar.train import train

    cfg = Config(model_dir=model_dir, run_dir=run_dir, method=method, steps=steps, batch_tasks=2, group_size=4,
                 max_turns=4, max_new_tokens=16, eval_every=0, eval_seeds=0, progress=False, save_every=1000)
    train(cfg)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = [json.loads(x) for x in f]
    return statistics.median(x["step_time"] for x in lines), statistics.median(
        x["prepass_time"] + x["update_time"] for x in lines)


def test_sdar_vs_grpo_step_time(embedded, tmp_path, benchmark):
    rounds = int(os.environ.get("SDAR_BENCH_ROUNDS", "3"))
    samples = _samples(embedded)
    record = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "platform": platform.platform(),
                          "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())},
              "samples": len(samples), "prompt_tokens_mean": statistics.mean(len(s.prompt_ids) for s in samples),
              "teacher_prompt_tokens_mean": statistics.mean(len(s.teacher_prompt_ids) for s in samples)}

    def run():
        for method in ("grpo", "sdar"):
            record[f"trainer_{method}_s"] = _trainer_time(embedded, samples, method, rounds)
            full, train_part = _full_step_time(embedded, str(tmp_path / f"{method}-{time.time_ns()}"), method, rounds)
            record[f"full_{method}_s"], record[f"full_train_part_{method}_s"] = full, train_part

    benchmark.pedantic(run, rounds=1, iterations=1)
    record["trainer_ratio"] = record["trainer_sdar_s"] / record["trainer_grpo_s"]
    record["full_ratio"] = record["full_sdar_s"] / record["full_grpo_s"]
    benchmark.extra_info.update(record)
    os.makedirs(RESULTS, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with open(os.path.join(RESULTS, f"train_step_{device}.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record, indent=2))
    assert record["trainer_sdar_s"] > 0 and record["full_grpo_s"] > 0
