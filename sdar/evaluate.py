"""``sdar eval``: success rate on a held-out split — fixed task seeds 0..n-1, a fixed sampling seed,
temperature 0.4, no skills (unless asked, to evaluate Skill-GRPO "with skills" or the privileged
teacher) — with the score (shop), per task type (household; search: question kind), invalid-format
rate and mean turns. JSON output.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

import torch

import envs
from sdar.rollout import episode_metrics, rollout

_ENV_CACHE: dict = {}


def _env_pool(env_name: str, split: str, env_seed: int, preset: str, n: int) -> list:
    key = (env_name, split, env_seed, preset)
    pool = _ENV_CACHE.setdefault(key, [])
    while len(pool) < n:
        pool.append(envs.make(env_name, split, env_seed, preset=preset))
    return pool[:n]


def evaluate_policy(engine, tokenizer, *, env_name: str, preset: str = "small", env_seed: int = 0,
                    split: str = "eval_seen", n_seeds: int = 200, max_turns: int = 0, temperature: float = 0.4,
                    max_new_tokens: int = 48, student_skills: bool = False, skill_strategy: str = "task_type",
                    skill_max_chars: int | None = 400, seed: int = 1234, batch: int = 64,
                    max_prompt_tokens: int | None = None) -> dict:
    """Play tasks ``0..n_seeds-1`` of ``split`` once each with ``engine``; returns the metrics dict."""
    if n_seeds < 1:
        raise ValueError(f"n_seeds: expected >= 1, got {n_seeds}")
    max_turns = max_turns or envs.spec(env_name).max_steps
    pool = _env_pool(env_name, split, env_seed, preset, min(batch, n_seeds))
    episodes = []
    for start in range(0, n_seeds, batch):
        seeds = list(range(start, min(start + batch, n_seeds)))
        _, eps = rollout(engine, tokenizer, pool, env_name=env_name, task_seeds=seeds, group_size=1,
                         max_turns=max_turns, temperature=temperature, max_new_tokens=max_new_tokens,
                         student_skills=student_skills, skill_strategy=skill_strategy,
                         skill_max_chars=skill_max_chars, seed=seed + start, max_prompt_tokens=max_prompt_tokens)
        episodes += eps
    out = {"split": split, "n": len(episodes), "temperature": temperature, "skills": student_skills,
           **episode_metrics(episodes)}
    by_type = defaultdict(list)
    for e in episodes:
        by_type[e.task_type].append(e.won)
    out["success_by_type"] = {k: sum(v) / len(v) for k, v in sorted(by_type.items())}
    out["n_by_type"] = {k: len(v) for k, v in sorted(by_type.items())}
    # per task, in seed order: two evaluations on the same seeds compare pairwise (a paired test)
    out["won_by_seed"] = [int(e.won) for e in sorted(episodes, key=lambda e: e.task_seed)]
    return out


def evaluate_model(model, tokenizer, *, engine_kind: str = "hf", model_dir: str | None = None,
                   max_model_len: int = 1024, **kwargs) -> dict:
    """:func:`evaluate_policy` with a fresh engine on ``model`` (the hf engine by default)."""
    from sdar.engines import make_engine

    engine = make_engine(engine_kind, model=model, tokenizer=tokenizer, model_dir=model_dir,
                         device=next(model.parameters()).device, max_model_len=max_model_len)
    was_training = model.training
    model.eval()
    try:
        return evaluate_policy(engine, tokenizer, **kwargs)
    finally:
        model.train(was_training)
        engine.close()


def run_eval(cfg) -> dict:
    """``sdar eval`` from an :class:`sdar.config.EvalConfig`."""
    from sdar.models import load_model

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    model_dir = cfg.model_dir
    if os.path.isdir(os.path.join(model_dir, "final")):
        model_dir = os.path.join(model_dir, "final")
    if os.path.exists(os.path.join(model_dir, "state.json")):  # a training checkpoint: its run's base model + weights
        from safetensors.torch import load_model as load_weights

        with open(os.path.join(model_dir, "state.json")) as f:
            base = json.load(f)["config"]["model_dir"]
        model, tok = load_model(base, device=cfg.device, dtype=cfg.dtype, train=False)
        load_weights(model, os.path.join(model_dir, "model.safetensors"))
    else:
        model, tok = load_model(model_dir, device=cfg.device, dtype=cfg.dtype, train=False)
    result = evaluate_model(model, tok, engine_kind=cfg.engine, model_dir=model_dir, env_name=cfg.env,
                            preset=cfg.preset, env_seed=cfg.env_seed, split=cfg.split, n_seeds=cfg.seeds,
                            max_turns=cfg.max_turns, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                            student_skills=cfg.skills, skill_strategy=cfg.skill_strategy,
                            skill_max_chars=cfg.skill_max_chars, seed=cfg.seed, batch=cfg.batch)
    result["model_dir"] = model_dir
    if cfg.out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        with open(cfg.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


__all__ = ["evaluate_model", "evaluate_policy", "run_eval"]
