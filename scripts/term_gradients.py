"""Where SDAR's gradient comes from, measured on real rollouts of a checkpoint.

    python -m scripts.term_gradients --config RUN/config.json --model-dir MODEL --batches 4 --out grads.json

The sampled SDAR term is g·(sg(l_T) − l_S) per response token, so its gradient is −g·∇l_S: the student's
own sampled tokens, weighted by the detached gate g = σ(β·Δ). Split g = ½ + (g − ½):

- ``half``: the gate fixed at ½ (gate ``none``), −½·∇l_S. It does not depend on the teacher; over the
  student's own samples its expectation is zero (E_π ∇log π = 0), so what a batch gives is sampling noise;
- ``dev`` = gated − half: −(g − ½)·∇l_S, the only part the teacher's log-probs reach (≈ (β/4)·∇KL(π_S ‖ π_T)
  in expectation, for small gaps);
- ``pg``: the clipped policy-gradient term at θ_old (ratio 1) with the step's GRPO advantages.

For each of ``--batches`` batches (the run config's batch_tasks × group_size episodes on the tasks of training
steps 0, 1, ...; the teacher context is its skill_strategy) it takes the three gradients over every response
token (token mean, as the trainer) and writes their norms, their cosines, and each part's mean cosine between
batches: a part whose direction repeats from batch to batch is signal, one whose does not is noise. Multiply
``half`` and ``dev`` by λ to compare them with ``pg`` as the trainer weighs them.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os

import torch

import envs
import sdar_kernels as sk
from sdar.batch import micro_batches, pack, pad_rows, pad_token_id, response_hidden
from sdar.config import Config
from sdar.engines import make_engine
from sdar.models import lm_head_weight, load_model
from sdar.rollout import rollout
from sdar.teacher import prepass
from sdar.train import step_advantages, step_seeds

PARTS = {"pg": {"pg_coef": 1.0, "sdar_coef": 0.0, "gate": "gap"},
         "half": {"pg_coef": 0.0, "sdar_coef": 1.0, "gate": "none"},
         "gated": {"pg_coef": 0.0, "sdar_coef": 1.0, "gate": "gap"}}


def batch_gradients(model, samples, pre: dict, advantages: torch.Tensor, cfg: Config, pad_id: int) -> dict:
    """{"pg", "half", "dev"}: flat fp64 gradients of one batch's terms (token mean over all response tokens)."""
    params = [p for p in model.parameters() if p.requires_grad]
    n_tok = sum(len(s.response_ids) for s in samples)
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    grads = {}
    for name, opts in PARTS.items():
        model.zero_grad(set_to_none=True)
        for idx in micro_batches(lengths, max_tokens=cfg.micro_batch_tokens):
            packed = pack([samples[i].prompt_ids for i in idx], [samples[i].response_ids for i in idx],
                          pad_id=pad_id, device=torch.device("cpu"))
            r = packed.labels.shape[1]
            h = response_hidden(model, packed)  # (b, R, H)
            old = pad_rows([pre["old_logp"][i] for i in idx], r)  # (b, R)
            th = pad_rows([pre["teacher_hidden"][i] for i in idx], r).to(h.dtype)  # (b, R, H)
            adv = advantages[idx][:, None].expand(-1, r)  # (b, R)
            loss, _ = sk.grpo_sdar_loss(h, th, lm_head_weight(model), packed.labels, adv, old, None, packed.mask,
                                        clip=cfg.clip_eps, beta=cfg.beta, temperature=cfg.temperature, **opts)
            (loss * float(packed.mask.sum()) / n_tok).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in params]).double()
    grads["dev"] = grads.pop("gated") - grads["half"]
    return grads


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="a run's config.json (env, rollout and gate settings)")
    ap.add_argument("--model-dir", required=True, help="the checkpoint to measure (a local HF dir)")
    ap.add_argument("--batches", type=int, default=4, help="rollout batches (>= 2 for the between-batch cosines)")
    ap.add_argument("--out", required=True, help="JSON file for the measurements")
    args = ap.parse_args(argv)
    if args.batches < 2:
        raise ValueError(f"batches: expected >= 2, got {args.batches}")
    with open(args.config) as f:
        cfg = Config(**{**json.load(f), "model_dir": args.model_dir, "resume": False})
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    model, tok = load_model(args.model_dir, device=torch.device("cpu"), dtype="float32")
    engine = make_engine("hf", model=model, tokenizer=tok, model_dir=args.model_dir, device=torch.device("cpu"),
                         max_model_len=cfg.max_model_len)
    pad_id = pad_token_id(model)
    pool = [envs.make(cfg.env, "train", cfg.env_seed, preset=cfg.preset)
            for _ in range(cfg.batch_tasks * cfg.group_size)]
    max_turns = cfg.max_turns or envs.spec(cfg.env).max_steps
    per_batch, grads = [], []
    for b in range(args.batches):
        task_seeds, sample_seed = step_seeds(cfg.seed, b, cfg.batch_tasks)
        model.eval()
        samples, _ = rollout(engine, tok, pool, env_name=cfg.env, task_seeds=task_seeds, seed=sample_seed,
                             group_size=cfg.group_size, max_turns=max_turns, temperature=cfg.temperature,
                             max_new_tokens=cfg.max_new_tokens, top_p=cfg.top_p, teacher_skills=True,
                             skill_strategy=cfg.skill_strategy, skill_max_chars=cfg.skill_max_chars,
                             max_prompt_tokens=cfg.max_model_len - cfg.max_new_tokens)
        advantages, _ = step_advantages(samples, norm_by_std=cfg.norm_by_std)  # (N,)
        pre = prepass(model, samples, pad_id=pad_id, device=torch.device("cpu"), max_tokens=cfg.micro_batch_tokens,
                      temperature=cfg.temperature, teacher=True)
        model.train()
        g = batch_gradients(model, samples, pre, advantages, cfg, pad_id)
        grads.append(g)
        per_batch.append({"samples": len(samples), "response_tokens": sum(len(s.response_ids) for s in samples),
                          **{f"norm_{k}": float(v.norm()) for k, v in g.items()},
                          "cos_dev_pg": _cos(g["dev"], g["pg"]), "cos_half_pg": _cos(g["half"], g["pg"]),
                          "cos_dev_half": _cos(g["dev"], g["half"])})
        print(json.dumps(per_batch[-1]), flush=True)
    pairs = list(itertools.combinations(range(len(grads)), 2))
    between = {f"between_batch_cos_{k}": sum(_cos(grads[i][k], grads[j][k]) for i, j in pairs) / len(pairs)
               for k in ("pg", "half", "dev")}
    means = {k: sum(p[k] for p in per_batch) / len(per_batch) for k in per_batch[0] if k.startswith(("norm", "cos"))}
    result = {"config": args.config, "model_dir": args.model_dir,
              "beta": cfg.beta, "skill_strategy": cfg.skill_strategy, "lam": cfg.lam, "batches": per_batch,
              "mean": means, **between}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({"mean": means, **between}, indent=2))
    return result


if __name__ == "__main__":
    main()
