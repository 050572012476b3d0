"""``sdar sft``: warm-start a policy on expert trajectories so RL starts from a policy that sometimes
succeeds.

Demos come from the environments' expert (``env.expert_action()``), optionally noisy: with
probability ``noise`` a random admissible action is *executed* instead, while the recorded reply is
always the expert's action from that state (so the policy also learns to recover). The number of
demos is limited on purpose, leaving RL room to improve.

The privileged-context mix (DESIGN §3): a fraction ``privileged_frac`` (default 0.4) of the demo
episodes carry the ``[Privileged Skill Information]`` prefix in their prompts — the teacher's format —
so the same weights learn to *read* skills and the skill-prompted teacher is better than the student
before RL starts. The report states both success rates (teacher = skills in the prompt) at step 0.

The loss is the token-mean negative log-likelihood of the reply tokens, computed with
``sdar_kernels.fused_logprobs`` on hidden states (no full logits).
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import torch

import envs
import sdar_kernels as sk
from envs.prompts import with_skills
from sdar.batch import micro_batches, pack, response_hidden
from sdar.config import SFTConfig
from sdar.models import chat_prompt_ids, lm_head_weight, load_model, resolve_device, stop_token_ids


@dataclass
class Turn:
    prompt: str  # the student's user message
    teacher_prompt: str  # the same with the privileged skill prefix
    reply: str  # the expert's reply text (think + action tags)


@dataclass
class ExpertEpisode:
    task_seed: int
    task_type: str
    won: bool
    turns: list[Turn] = field(default_factory=list)


def expert_reply(env_name: str, action: str) -> str:
    """The reply text an agent should produce for ``action`` (the parser's format)."""
    if env_name == "search_qa":
        for kind in ("search", "answer"):
            if action.startswith(f"{kind}[") and action.endswith("]"):
                return f"<think>{kind}</think><{kind}>{action[len(kind) + 1:-1]}</{kind}>"
    return f"<think>next</think><action>{action}</action>"


def expert_episodes(env_name: str, *, preset: str, env_seed: int, n: int, max_turns: int, seed: int = 0,
                    noise: float = 0.0, skill_strategy: str = "task_type", skill_max_chars: int | None = 400,
                    split: str = "train") -> list[ExpertEpisode]:
    """``n`` expert (optionally noisy) episodes on ``split``; task seeds drawn from ``seed``."""
    rng = random.Random(seed)
    env = envs.make(env_name, split, env_seed, preset=preset)
    spec = envs.spec(env_name)
    out = []
    for _ in range(n):
        task_seed = rng.randrange(10**9)
        obs, info = env.reset(task_seed)
        skills = envs.retrieve_skills(env_name, task=info["task"], task_type=info.get("task_type"),
                                      strategy=skill_strategy, rng=random.Random(rng.random()),
                                      max_chars=skill_max_chars,
                                      hint=env.privileged_hint() if skill_strategy == "oracle" else None)
        ep = ExpertEpisode(task_seed, info.get("task_type", ""), False)
        history = []
        for t in range(max_turns):
            prompt = envs.build_prompt(env_name, task=info["task"], observation=obs,
                                       admissible_actions=info.get("admissible_actions", []), history=history,
                                       history_turns=spec.history_turns, step=t)
            expert = env.expert_action()
            ep.turns.append(Turn(prompt, with_skills(prompt, skills), expert_reply(env_name, expert)))
            admissible = info.get("admissible_actions") or []
            action = rng.choice(admissible) if admissible and rng.random() < noise else expert
            history.append((obs, action))
            obs, _, done, info = env.step(action)
            if done:
                break
        ep.won = bool(info.get("won", False))
        out.append(ep)
    env.close()
    return out


def build_examples(tokenizer, episodes: list[ExpertEpisode], *, privileged_frac: float, seed: int):
    """(prompt_ids, reply_ids + stop) pairs; a ``privileged_frac`` share of episodes use the teacher prompt."""
    rng = random.Random(seed)
    stop = stop_token_ids(tokenizer)[0] if tokenizer.eos_token_id is None else tokenizer.eos_token_id
    examples = []
    for ep in episodes:
        privileged = rng.random() < privileged_frac
        for turn in ep.turns:
            prompt = chat_prompt_ids(tokenizer, turn.teacher_prompt if privileged else turn.prompt)
            reply = tokenizer(turn.reply, add_special_tokens=False)["input_ids"] + [stop]
            examples.append((prompt, reply))
    return examples


def sft(cfg: SFTConfig) -> dict:
    """Run SFT from ``cfg.model_dir`` into ``cfg.out_dir``; returns (and writes) the report."""
    t0 = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model, tok = load_model(cfg.model_dir, device=device, dtype=cfg.dtype)
    episodes = expert_episodes(cfg.env, preset=cfg.preset, env_seed=cfg.env_seed, n=cfg.episodes,
                               max_turns=cfg.max_turns or envs.spec(cfg.env).max_steps, seed=cfg.seed,
                               noise=cfg.noise, skill_strategy=cfg.skill_strategy,
                               skill_max_chars=cfg.skill_max_chars)
    examples = build_examples(tok, episodes, privileged_frac=cfg.privileged_frac, seed=cfg.seed)
    print(f"[sft] {len(episodes)} expert episodes, {len(examples)} turns, {time.time() - t0:.0f} s", file=sys.stderr,
          flush=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    w = lm_head_weight(model)
    lengths = [len(p) + len(r) for p, r in examples]
    order_rng = random.Random(cfg.seed + 1)
    batches_per_epoch = len(micro_batches(lengths, max_tokens=cfg.batch_tokens))
    total = max(cfg.epochs * batches_per_epoch, 1)
    it, losses = 0, []
    model.train()
    for _epoch in range(cfg.epochs):
        # length-bucketed batches, visited in random order
        batches = micro_batches(lengths, max_tokens=cfg.batch_tokens)
        order_rng.shuffle(batches)
        for mb in batches:
            lr = cfg.lr * min(1.0, (it + 1) / max(cfg.warmup, 1)) * 0.5 * (1 + math.cos(math.pi * it / total))
            for group in opt.param_groups:
                group["lr"] = lr
            packed = pack([examples[i][0] for i in mb], [examples[i][1] for i in mb], pad_id=tok.pad_token_id,
                          device=device)
            h = response_hidden(model, packed)  # (b, R, H)
            logp, _ = sk.fused_logprobs(h, w, packed.labels, impl=cfg.impl)  # (b, R)
            m = packed.mask.float()
            loss = -(logp * m).sum() / m.sum().clamp(min=1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            it += 1
        print(f"[sft] epoch {_epoch + 1}/{cfg.epochs}: loss {sum(losses[-len(batches):]) / len(batches):.4f}, "
              f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    os.makedirs(cfg.out_dir, exist_ok=True)
    model.save_pretrained(cfg.out_dir, safe_serialization=True)
    tok.save_pretrained(cfg.out_dir)
    report = {"episodes": len(episodes), "expert_success": sum(e.won for e in episodes) / max(len(episodes), 1),
              "examples": len(examples), "iterations": it, "final_loss": sum(losses[-20:]) / max(len(losses[-20:]), 1),
              "train_seconds": time.time() - t0}
    if cfg.eval_seeds > 0:
        from sdar.evaluate import evaluate_model

        common = dict(env_name=cfg.env, preset=cfg.preset, env_seed=cfg.env_seed, split=cfg.eval_split,
                      n_seeds=cfg.eval_seeds, max_turns=cfg.eval_max_turns, temperature=cfg.eval_temperature,
                      max_new_tokens=cfg.max_new_tokens, skill_strategy=cfg.skill_strategy,
                      skill_max_chars=cfg.skill_max_chars)
        report["student"] = evaluate_model(model, tok, **common, student_skills=False)
        report["teacher"] = evaluate_model(model, tok, **common, student_skills=True)
    report["seconds"] = time.time() - t0
    with open(os.path.join(cfg.out_dir, "sft_report.json"), "w") as f:
        json.dump({"config": cfg.__dict__, **report}, f, indent=2)
    return report


__all__ = ["ExpertEpisode", "Turn", "build_examples", "expert_episodes", "expert_reply", "sft"]
