"""``sdar train``: the GRPO + SDAR loop, top to bottom.

    python -m sdar train --env household --method sdar --steps 60 --run-dir runs/hh-sdar
    python -m sdar train --run-dir runs/hh-sdar --resume        # after a crash or kill -9

One step:

1. **Rollout** — ``batch_tasks`` tasks × ``group_size`` episodes (members share the task seed),
   multi-turn; every turn of every active episode is generated in one engine call per turn
   (:mod:`sdar.rollout`). Each turn is a sample carrying its episode's reward minus its format
   penalty; the engine's log-probs are kept.
2. **Advantages** — GRPO over all turn-samples of a group (``norm_by_std=False`` → Dr.GRPO); RLSD
   reweights them per token inside the loss.
3. **Pre-pass with θ_old** (no grad, :mod:`sdar.teacher`) — the trainer's own old log-probs (exact
   PPO ratio; the engine/trainer mismatch is logged and optionally corrected by truncated importance
   sampling), the frozen reference's log-probs (k3 KL anchor to the start policy) and the teacher's
   hidden states on the skill-prefixed prompts (once per step, before the updates).
4. **Loss and update** — one student forward per micro-batch; ``sdar_kernels.grpo_sdar_loss`` takes
   the student and teacher hidden states and the LM-head weight (never full logits) and returns
   clipped PG + entropy bonus + k3 KL + λ·distillation; AdamW with global grad-norm clipping;
   ``mini_batches`` optimizer steps × ``ppo_epochs``. Micro-batch losses are scaled by their share
   of the mini-batch's tokens (token-mean) or sequences (seq-mean modes), so accumulation is exact
   for the PG/KL/entropy terms.
5. **Sync, log, evaluate, checkpoint** — weights pushed into the engine; one JSONL line per step;
   periodic evaluation on the held-out split; an atomic checkpoint every ``save_every`` steps.

Kept: everything the published method needs (GRPO with PPO clipping, multi-turn agents, the
privileged teacher, every baseline behind ``--method``), exact resume, multi-process training
(``torchrun --nproc_per_node=N -m sdar train ...``: FSDP2 policy, rollout batch split over ranks,
world-size-free checkpoints — :mod:`sdar.distributed`; every ``world > 1`` branch below is that).
Dropped: sequence packing across samples, dynamic sampling / filtering of zero-variance groups,
value functions, reward models; the teacher is never run per mini-batch (θ_old only).
"""
from __future__ import annotations

import json
import os
import random
import time

import numpy as np
import torch

import envs
import sdar_kernels as sk
from sdar import distributed as D
from sdar.algos import group_advantages, loss_options, method_spec, pooled_group_advantages
from sdar.batch import micro_batches, pack, pad_rows, pad_token_id, response_hidden
from sdar.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, truncate_metrics
from sdar.config import Config
from sdar.engines import make_engine
from sdar.evaluate import evaluate_policy
from sdar.models import lm_head_weight, load_model, resolve_device
from sdar.rollout import episode_metrics, rollout
from sdar.teacher import prepass


def step_seeds(seed: int, step: int, n: int) -> tuple[list[int], int]:
    """Task seeds of ``step`` and its sampling seed: a pure function of (seed, step), so a resumed
    run replays exactly the tasks the uninterrupted one would have played."""
    rng = random.Random(seed * 1_000_003 + step)
    return [rng.randrange(10**9) for _ in range(n)], rng.randrange(2**31)


def step_advantages(samples, *, norm_by_std: bool) -> tuple[torch.Tensor, dict]:
    """GRPO advantages (N,) of the step's samples; under torchrun the group statistics come from every
    rank's all-gathered (group, reward) pairs, so a group spread over ranks is treated as on one process."""
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)  # (N,)
    groups = torch.tensor([s.group for s in samples], dtype=torch.long)  # (N,)
    if D.world_size() == 1:
        return group_advantages(rewards, groups, norm_by_std=norm_by_std)
    parts = D.all_gather_objects((rewards, groups))
    return pooled_group_advantages([p[0] for p in parts], [p[1] for p in parts], part=D.rank(),
                                   norm_by_std=norm_by_std)


def update(model, optimizer, samples, pre: dict, advantages: torch.Tensor, cfg: Config, *, step: int,
           device: torch.device) -> dict:
    """``ppo_epochs`` × ``mini_batches`` optimizer steps on the step's samples; returns mean metrics.

    Under torchrun ``samples`` are this rank's share: micro-batch losses are scaled by their share of
    the global token (sequence) count and by the world size (FSDP averages gradients over ranks), and
    every rank runs as many micro-batches as the busiest one (the extra ones with zero weight)."""
    world = D.world_size()
    spec = method_spec(cfg.method)
    opts = loss_options(cfg.method, lam=cfg.lam, gate=cfg.gate, step=step, rlsd_decay_steps=cfg.rlsd_decay_steps)
    weight = lm_head_weight(model)
    pad_id = pad_token_id(model)
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    sums, count = {}, 0.0
    fixed_len = cfg.max_new_tokens + 1 if cfg.agg == "seq-mean-token-sum-norm" else None  # Dr.GRPO horizon
    for _epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(len(samples), generator=gen).tolist()
        for mb in np.array_split(np.array(perm), cfg.mini_batches):
            mb = mb.tolist()
            mb_tokens = sum(len(samples[i].response_ids) for i in mb)
            mb_seqs = len(mb)
            lengths = [len(samples[i].prompt_ids) + len(samples[i].response_ids) for i in mb]
            micros = micro_batches(lengths, max_tokens=cfg.micro_batch_tokens)
            if world > 1:  # global counts; equal numbers of FSDP forward/backward passes on every rank
                mb_tokens, mb_seqs = (int(x) for x in D.global_sum(mb_tokens, mb_seqs))
                micros += [None] * (D.global_max(len(micros)) - len(micros))
            if not mb_seqs:
                continue
            for micro in micros:
                if micro is None:
                    _zero_pass(model, pad_id, device)
                    continue
                idx = [mb[j] for j in micro]
                packed = pack([samples[i].prompt_ids for i in idx], [samples[i].response_ids for i in idx],
                              pad_id=pad_id, device=device, resp_len=fixed_len)
                r = packed.labels.shape[1]
                h = response_hidden(model, packed)  # (b, R, H), with grad
                if world > 1:
                    weight = D.head_weight(model)  # the root group's full weight after the forward
                old = pad_rows([pre["old_logp"][i] for i in idx], r).to(device)  # (b, R)
                ref = pad_rows([pre["ref_logp"][i] for i in idx], r).to(device) if pre["ref_logp"] else None
                th = pad_rows([pre["teacher_hidden"][i] for i in idx], r).to(device) if spec.teacher else None
                adv = advantages[idx].to(device)[:, None].expand(-1, r)  # (b, R)
                if cfg.tis_cap > 0:  # truncated IS: engine sampled, trainer scores
                    eng = pad_rows([torch.tensor(samples[i].engine_logprobs) for i in idx], r).to(device)
                    w, _ = sk.losses.truncated_is_weights(old, eng, cap=cfg.tis_cap)  # (b, R)
                    adv = adv * w
                loss, m = sk.grpo_sdar_loss(
                    h, th.to(h.dtype) if th is not None else None, weight, packed.labels, adv, old, ref,
                    packed.mask, clip=cfg.clip_eps, agg=cfg.agg, norm_len=fixed_len, kl_coef=cfg.kl_coef,
                    entropy_coef=cfg.entropy_coef, beta=cfg.beta, sdar_estimator=cfg.distill_loss,
                    temperature=cfg.temperature, impl=cfg.impl, **opts)
                tok = float(packed.mask.sum())
                share = tok / max(mb_tokens, 1) if cfg.agg == "token-mean" else len(idx) / mb_seqs
                (loss * (share * world if world > 1 else share)).backward()
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * tok
                count += tok
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm) * mb_tokens
    if world > 1:
        sums, count = D.reduce_metric_sums(sums, count, replicated=("grad_norm",))
    out = {k: v / max(count, 1.0) for k, v in sums.items()}
    out["rlsd_coef"] = opts["rlsd_coef"]
    return out


def _zero_pass(model, pad_id: int, device: torch.device) -> None:
    """A forward/backward with zero loss: a rank short of micro-batches still joins FSDP's collectives."""
    packed = pack([[pad_id]], [[pad_id]], pad_id=pad_id, device=device)
    h = response_hidden(model, packed)  # (1, 1, H)
    (h.sum() * 0.0 + D.head_weight(model).sum() * 0.0).backward()


def gate_frac_above_half(metrics: dict, *, gate: str, distill: str, beta: float) -> dict:
    """Fraction of response tokens with gate ≥ 0.5. For the gap gate with β > 0, σ(βΔ) ≥ 0.5 ⇔ Δ ≥ 0,
    i.e. 1 − neg_gap_frac (near-deterministic tokens often have Δ = 0 exactly, gate 0.5); the constant
    gate 0.5 (gate "none", or the gap gate with β = 0) gives 1; other gates are not reported (the kernel
    returns no per-token gates)."""
    if distill != "sdar" or "neg_gap_frac" not in metrics:
        return {}
    if gate == "none" or (gate == "gap" and beta == 0):
        return {"gate_frac_ge_half": 1.0}
    return {"gate_frac_ge_half": 1.0 - metrics["neg_gap_frac"]} if gate == "gap" else {}


def train(cfg: Config) -> dict:
    """Run (or resume) the training described by ``cfg``; returns the last metrics line."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if D.init_from_env(device):
        device = D.local_device(device)
    world, rank = D.world_size(), D.rank()
    main = rank == 0  # rank 0 writes config, metrics, checkpoints and the final model
    if world > 1 and cfg.lora_rank > 0:
        raise ValueError("lora_rank: LoRA is not supported with torchrun (FSDP) yet; use full fine-tuning")
    if world > 1 and cfg.tensor_parallel_size > 1:
        raise ValueError("tensor_parallel_size: > 1 is for one training process; under torchrun each rank "
                         "runs its own engine on its GPU")
    if world > 1 and cfg.rollout_split == "split" and cfg.batch_tasks < world:
        raise ValueError(f"batch_tasks: expected >= the world size {world} with rollout_split=split")
    os.makedirs(cfg.run_dir, exist_ok=True)
    metrics_path = os.path.join(cfg.run_dir, "metrics.jsonl")
    ckpt = latest_checkpoint(cfg.run_dir) if cfg.resume else None
    if not cfg.resume and os.path.exists(metrics_path) and os.path.getsize(metrics_path) > 0:
        raise ValueError(f"run_dir: {cfg.run_dir!r} already holds a run; pass --resume or a new --run-dir")
    D.barrier()  # every rank checked run_dir before rank 0 writes into it
    if main:
        cfg.save(os.path.join(cfg.run_dir, "config.json"))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    model, tok = load_model(cfg.model_dir, device=device, dtype=cfg.dtype, lora_rank=cfg.lora_rank,
                            gradient_checkpointing=cfg.gradient_checkpointing, liger=cfg.liger,
                            trust_remote_code=cfg.trust_remote_code)
    roll_model = model  # generates and runs the θ_old pre-pass
    if world > 1:  # a plain copy for rollout and pre-pass, the policy itself sharded (sdar.distributed)
        roll_model, _ = load_model(cfg.model_dir, device=device, dtype=cfg.dtype, train=False)
        D.shard(model)
    ref_model = None
    if cfg.kl_coef > 0:  # the frozen start policy (the SFT checkpoint) anchors the k3 KL
        ref_model, _ = load_model(cfg.model_dir, device=device, dtype=cfg.dtype, train=False)
        ref_model.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    start = 0
    if ckpt is not None:
        if world > 1:
            state = D.load_checkpoint(ckpt, model=model, optimizer=optimizer, copy=roll_model)
        else:
            state = load_checkpoint(ckpt, model=model, optimizer=optimizer)
        start = state["step"]
        if main:
            truncate_metrics(metrics_path, state["metrics_offset"])
    elif main:
        truncate_metrics(metrics_path, 0)
    engine_opts = {"tensor_parallel_size": cfg.tensor_parallel_size} if cfg.tensor_parallel_size > 1 else {}
    engine = make_engine(cfg.engine, model=roll_model, tokenizer=tok, model_dir=cfg.model_dir, device=device,
                         max_model_len=cfg.max_model_len, **engine_opts)
    spec = method_spec(cfg.method)
    env_spec = envs.spec(cfg.env)
    max_turns = cfg.max_turns or env_spec.max_steps
    pool = [envs.make(cfg.env, "train", cfg.env_seed, preset=cfg.preset)
            for _ in range(cfg.batch_tasks * cfg.group_size)]
    max_prompt = cfg.max_model_len - cfg.max_new_tokens
    roll_kw = dict(env_name=cfg.env, group_size=cfg.group_size, max_turns=max_turns, temperature=cfg.temperature,
                   max_new_tokens=cfg.max_new_tokens, top_p=cfg.top_p, teacher_skills=spec.teacher,
                   student_skills=spec.student_skills, skill_strategy=cfg.skill_strategy,
                   skill_max_chars=cfg.skill_max_chars, max_prompt_tokens=max_prompt)
    eval_kw = dict(env_name=cfg.env, preset=cfg.preset, env_seed=cfg.env_seed, split=cfg.eval_split,
                   n_seeds=cfg.eval_seeds, max_turns=max_turns, temperature=cfg.eval_temperature,
                   max_new_tokens=cfg.max_new_tokens, skill_strategy=cfg.skill_strategy,
                   skill_max_chars=cfg.skill_max_chars, max_prompt_tokens=max_prompt)
    writer = _tensorboard(cfg) if main else None
    metrics_file = open(metrics_path, "a") if main else None

    def log(line: dict) -> None:
        if not main:
            return
        metrics_file.write(json.dumps(line) + "\n")
        metrics_file.flush()
        os.fsync(metrics_file.fileno())
        if writer is not None:
            for k, v in line.items():
                if isinstance(v, (int, float)) and k != "step":
                    writer.add_scalar(k, v, line["step"])

    def evaluate(step: int) -> dict:
        if not main:  # rank 0 evaluates on its plain copy; the others go on to the next collective
            return {}
        model.eval()
        out = {"eval_" + k: v for k, v in evaluate_policy(engine, tok, **eval_kw).items()
               if isinstance(v, (int, float, dict)) and k not in ("n", "temperature", "skills")}
        if spec.student_skills:  # Skill-GRPO is evaluated with and without skills
            out.update({"eval_skills_" + k: v for k, v in evaluate_policy(engine, tok, **eval_kw, student_skills=True)
                        .items() if isinstance(v, (int, float)) and k not in ("n", "temperature", "skills")})
        model.train()
        return out

    if start == 0 and cfg.eval_every > 0:
        log({"step": 0, **evaluate(0)})
    bar = _progress(cfg, start) if main else None
    line = {}
    for step in range(start, cfg.steps):
        t0 = time.time()
        # 1. rollout (θ_old = the current weights)
        task_seeds, sample_seed = step_seeds(cfg.seed, step, cfg.batch_tasks)
        model.eval()
        if world > 1:
            samples, episodes = _rank_rollout(engine, tok, pool, cfg, task_seeds, sample_seed, roll_kw)
        else:
            samples, episodes = rollout(engine, tok, pool, task_seeds=task_seeds, seed=sample_seed, **roll_kw)
        model.train()
        t_roll = time.time() - t0
        # 2. advantages over all turn-samples of each group
        advantages, adv_m = step_advantages(samples, norm_by_std=cfg.norm_by_std)  # (N,)
        # 3. pre-pass with θ_old: old log-probs, reference log-probs, teacher hidden states
        t1 = time.time()
        pre = prepass(roll_model, samples, pad_id=pad_token_id(model), device=device, max_tokens=cfg.micro_batch_tokens,
                      temperature=cfg.temperature, teacher=spec.teacher, ref_model=ref_model, impl=cfg.impl)
        t_pre = time.time() - t1
        mismatch = _mismatch(samples, pre) if cfg.temperature == 1.0 else float("nan")
        # 4. loss and optimizer steps
        t2 = time.time()
        upd = update(model, optimizer, samples, pre, advantages, cfg, step=step, device=device)
        extra = gate_frac_above_half(upd, gate=spec.gate or cfg.gate, distill=spec.distill, beta=cfg.beta)
        if world > 1:
            D.sync_copy(model, roll_model)
        engine.sync_weights(roll_model)
        t_upd = time.time() - t2
        # 5. metrics, evaluation, checkpoint
        n_tok = sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
        n_samples, n_resp = len(samples), sum(len(s.response_ids) for s in samples)
        if world > 1:  # whole-batch counts and episode metrics
            n_tok, n_samples, n_resp = (int(x) for x in D.global_sum(n_tok, n_samples, n_resp))
            if cfg.rollout_split == "split":
                episodes = D.gather_episodes(episodes)
        dt = time.time() - t0
        line = {"step": step + 1, **episode_metrics(episodes), **adv_m, **upd, **extra,
                "samples": n_samples, "response_tokens": n_resp,
                "tokens_per_s": n_tok / dt, "engine_mismatch": mismatch, "step_time": dt,
                "rollout_time": t_roll, "prepass_time": t_pre, "update_time": t_upd, "lr": cfg.lr}
        last = step + 1 == cfg.steps
        if (cfg.eval_every > 0 and (step + 1) % cfg.eval_every == 0) or (last and cfg.eval_seeds > 0):
            line.update(evaluate(step + 1))
        log(line)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(success=f"{line['success']:.2f}", reward=f"{line['reward']:.2f}")
        if (cfg.save_every > 0 and (step + 1) % cfg.save_every == 0) or last:
            opt_state = D.full_optimizer_state(model, optimizer) if world > 1 else None  # a collective
            if main:
                save_checkpoint(cfg.run_dir, step=step + 1, model=roll_model, optimizer=optimizer,
                                config=json.loads(cfg.to_json()), metrics_offset=metrics_file.tell(),
                                keep=cfg.keep_checkpoints, optimizer_state=opt_state)
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    if world > 1:  # rank 0 exports the gathered weights (its plain copy); the group is done
        if main:
            metrics_file.close()
            roll_model.save_pretrained(os.path.join(cfg.run_dir, "final"), safe_serialization=True)
            tok.save_pretrained(os.path.join(cfg.run_dir, "final"))
        engine.close()
        D.close()  # waits for every rank first
        return line
    metrics_file.close()
    final = os.path.join(cfg.run_dir, "final")
    if hasattr(model, "merge_and_unload"):  # LoRA: save merged weights so `sdar eval` loads a plain model
        model = model.merge_and_unload()
    model.save_pretrained(final, safe_serialization=True)
    tok.save_pretrained(final)
    engine.close()
    return line


def _rank_rollout(engine, tok, pool, cfg: Config, task_seeds: list[int], sample_seed: int, roll_kw: dict):
    """This rank's samples (with global group ids) and episodes. ``split``: rank r plays tasks
    r, r + W, ...; ``replicate``: every rank plays the whole batch (as one process would) and keeps
    samples r, r + W, ... (groups spread over ranks; every rank holds every episode)."""
    world, rank = D.world_size(), D.rank()
    if cfg.rollout_split == "replicate":
        samples, episodes = rollout(engine, tok, pool, task_seeds=task_seeds, seed=sample_seed, **roll_kw)
        return samples[rank::world], episodes
    mine = list(range(rank, len(task_seeds), world))  # global task indices of this rank
    samples, episodes = rollout(engine, tok, pool, task_seeds=[task_seeds[g] for g in mine], seed=sample_seed,
                                **roll_kw)
    for x in [*samples, *episodes]:
        x.group = mine[x.group]
    return samples, episodes


def _mismatch(samples, pre) -> float:
    """Mean |engine log-prob − trainer log-prob| over the sampled tokens (same weights θ_old)."""
    num, den = 0.0, 0
    for i, s in enumerate(samples):
        eng = torch.tensor(s.engine_logprobs, dtype=torch.float32)
        num += float((eng - pre["old_logp"][i].cpu()).abs().sum())
        den += eng.numel()
    return num / max(den, 1) if den else float("nan")


def _progress(cfg: Config, start: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=f"{cfg.method}@{cfg.env}", dynamic_ncols=True)


def _tensorboard(cfg: Config):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # tensorboard not installed
        raise ValueError("tensorboard: the `tensorboard` package is not installed") from e
    return SummaryWriter(os.path.join(cfg.run_dir, "tb"))


__all__ = ["step_advantages", "step_seeds", "train", "update"]
