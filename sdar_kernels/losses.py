"""RL maths as small pure functions (DESIGN §1): tensors and keyword-only hyper-parameters in,
``(tensor, metrics)`` out. Every per-token function works elementwise on any shape; the
aggregation functions treat the last dimension as the tokens of one sequence.

The training loop imports these; ``grpo_sdar_loss`` composes them through ``grpo_token_objective``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .options import AGG_MODES, DISTILL_KINDS, GATES, SAMPLED_ESTIMATORS, check_choice


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Σ mask·values / Σ mask (fp32 scalar); 0 when the mask is empty. No host sync."""
    mask = mask.float()
    total = mask.sum()
    return (values.float() * mask).sum() / torch.where(total > 0, total, torch.ones_like(total))


# ---------------------------------------------------------------- SDAR gate and distillation terms

def sdar_gate(gap: Tensor, entropy: Tensor | None = None, *, gate: str = "gap", beta: float = 5.0,
              vocab_size: int | None = None) -> tuple[Tensor, dict]:
    """Detached gate g_t in [0, 1] (DESIGN §1).

    gap: Δ_t = logp_T − logp_S; entropy: student entropy H_t (needed by "entropy" and "soft_or"),
    normalised by log(vocab_size) of the FULL vocabulary. Returns (gate, {"entropy_norm": ĥ or None}).
    """
    check_choice("gate", gate, GATES)
    gap = gap.detach().float()
    h_norm = None
    if gate in ("entropy", "soft_or"):
        if entropy is None or vocab_size is None:
            raise ValueError(f"gate={gate!r} needs the student entropy and vocab_size")
        h_norm = entropy.detach().float() / (math.log(vocab_size) if vocab_size > 1 else 1.0)
    if gate == "gap":
        g = torch.sigmoid(beta * gap)
    elif gate == "entropy":
        g = h_norm
    elif gate == "soft_or":
        g = 1 - (1 - h_norm) * (1 - torch.sigmoid(beta * gap))
    else:
        g = torch.full_like(gap, 0.5)
    return g, {"entropy_norm": h_norm}


def sdar_token_loss(logp: Tensor, teacher_logp: Tensor, *, gate: Tensor, estimator: str = "sdar") -> tuple[Tensor, dict]:
    """Per-token SDAR loss ℓ_t (only ``logp`` carries gradient).

    "sdar": ℓ = g·(sg(logp_T) − logp_S); "reverse_kl": ℓ = −g·sg(Δ)·logp_S. Returns (ℓ, {"gap": Δ}).
    """
    # Only the sampled estimators are per-token functions of log-probs; the full-distribution ones need the
    # hidden states and go through ``sdar_loss`` / ``gated_divergence``.
    check_choice("estimator", estimator, SAMPLED_ESTIMATORS)
    teacher_logp = teacher_logp.detach()
    gap = teacher_logp - logp.detach()
    if estimator == "sdar":
        loss = gate * (teacher_logp - logp)
    else:
        loss = -gate * gap * logp
    return loss, {"gap": gap}


def skill_sd_loss(logp: Tensor, teacher_logp: Tensor, old_logp: Tensor, *, max_log_ratio: float = 10.0) -> tuple[Tensor, dict]:
    """Skill-SD per-token term ρ·k3(ℓ): ℓ = logp_S − sg(logp_T), k3 = e^{−ℓ} − 1 + ℓ,
    ρ = exp(min(logp_S − logp_old, max_log_ratio)), detached (an importance weight).
    Returns (ρ·k3, {"ratio": ρ})."""
    ell = logp - teacher_logp.detach()
    k3 = torch.exp(-ell) - 1 + ell
    rho = torch.exp(torch.clamp(logp.detach() - old_logp.detach(), max=max_log_ratio))
    return rho * k3, {"ratio": rho}


def rlsd_advantages(advantages: Tensor, teacher_logp: Tensor, old_logp: Tensor, *, coef: float,
                    clip: float = 0.2) -> tuple[Tensor, dict]:
    """RLSD reweighting Â = A·((1−λ) + λ·clip(exp(sign(A)·(logp_T − logp_old)), 1−ε, 1+ε)), detached.

    λ = ``coef`` (the trainer anneals it, e.g. 0.5 → 0 over 100 steps). Returns (Â, {"weight": w}).
    """
    advantages = advantages.detach()
    ratio = torch.exp(torch.sign(advantages) * (teacher_logp.detach() - old_logp.detach()))
    weight = (1 - coef) + coef * torch.clamp(ratio, 1 - clip, 1 + clip)
    return advantages * weight, {"weight": weight}


# ---------------------------------------------------------------- policy-gradient pieces

def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, *, clip: float = 0.2,
                clip_high: float | None = None) -> tuple[Tensor, dict]:
    """Per-token PPO clipped loss max(−A·r, −A·clip(r, 1−ε, 1+ε_high)), r = exp(logp − sg(old)).

    Returns (loss, {"ratio": r, "clipped": bool mask where the clipped branch is active}).
    """
    clip_high = clip if clip_high is None else clip_high
    ratio = torch.exp(logp - old_logp.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip_high)
    return torch.maximum(unclipped, clipped), {"ratio": ratio.detach(), "clipped": (clipped > unclipped).detach()}


def k3_kl(logp: Tensor, ref_logp: Tensor) -> tuple[Tensor, dict]:
    """Per-token k3 estimator of KL(π‖π_ref): e^{ref − logp} − (ref − logp) − 1 (≥ 0)."""
    diff = ref_logp.detach() - logp
    return torch.exp(diff) - diff - 1, {}


def entropy_bonus(entropy: Tensor, *, coef: float) -> tuple[Tensor, dict]:
    """Per-token entropy term to *add* to the loss: −coef·H_t."""
    return -coef * entropy, {}


def truncated_is_weights(logp_train: Tensor, logp_rollout: Tensor, *, cap: float = 2.0) -> tuple[Tensor, dict]:
    """Truncated importance weights min(exp(logp_train − logp_rollout), cap), detached (for
    rollout-engine/trainer mismatch). Returns (w, {"truncated": bool mask where w hit the cap})."""
    w = torch.exp(logp_train.detach() - logp_rollout.detach())
    return torch.clamp(w, max=cap), {"truncated": w > cap}


# ---------------------------------------------------------------- aggregation

def agg_weights(mask: Tensor, mode: str, *, norm_len: int | None = None) -> Tensor:
    """Per-token weights c with agg_loss(L, mask, mode) = Σ c·L (fp32, mask's shape).

    mask: (..., T) bool/float, the last dimension being one sequence's tokens.
    token-mean: mask / Σ mask. seq-mean-token-mean: mask / (S · Σ_t mask) per sequence.
    seq-mean-token-sum: mask / S. seq-mean-token-sum-norm (Dr.GRPO): mask / norm_len
    (default T). S = number of sequences with at least one valid token; empty sums count as 1
    (a fully masked input gives all-zero weights, never NaN).
    """
    check_choice("agg", mode, AGG_MODES)
    mask = mask.float()

    def safe(x: Tensor) -> Tensor:
        return torch.where(x > 0, x, torch.ones_like(x))

    if mode == "token-mean":
        return mask / safe(mask.sum())
    if mask.dim() == 0:
        raise ValueError(f"agg={mode!r} needs a mask with a token dimension")
    per_seq = mask.sum(-1, keepdim=True)
    n_seq = safe((per_seq > 0).float().sum())
    if mode == "seq-mean-token-mean":
        return mask / (safe(per_seq) * n_seq)
    if mode == "seq-mean-token-sum":
        return mask / n_seq
    return mask / float(mask.shape[-1] if norm_len is None else norm_len)


def agg_loss(loss_mat: Tensor, mask: Tensor, mode: str, *, norm_len: int | None = None) -> tuple[Tensor, dict]:
    """Aggregate a per-token loss (..., T) under ``mode`` (see ``agg_weights``) to a scalar."""
    weights = agg_weights(mask, mode, norm_len=norm_len)
    return (weights * loss_mat.float()).sum(), {"weights": weights}


# ---------------------------------------------------------------- the composed per-token objective

def grpo_token_objective(logp: Tensor, entropy: Tensor, *, advantages: Tensor, agg_weight: Tensor,
                         distill_weight: Tensor, old_logp: Tensor | None = None, ref_logp: Tensor | None = None,
                         teacher_logp: Tensor | None = None, pg_coef: float = 1.0, clip: float = 0.2,
                         clip_high: float | None = None, kl_coef: float = 0.0, entropy_coef: float = 0.0,
                         distill: str = "sdar", sdar_coef: float = 0.01, gate: str = "gap", beta: float = 5.0,
                         estimator: str = "sdar", vocab_size: int | None = None, rlsd_coef: float = 0.0,
                         max_log_ratio: float = 10.0) -> tuple[Tensor, dict]:
    """Per-token weighted objective f_t with loss = Σ_t f_t (elementwise; any shape).

    f = agg_weight·(pg_coef·PG + kl_coef·k3 − entropy_coef·H) + distill_weight·sdar_coef·D, with
    D the SDAR term (distill="sdar", gate/estimator as in ``sdar_gate``/``sdar_token_loss``) or the
    Skill-SD term (distill="skill_sd") or nothing (distill="none" or no teacher). Advantages are
    RLSD-reweighted when rlsd_coef > 0. old_logp None = on-policy (sg(logp)). Returns
    (f, terms) with detached per-token terms: pg, ratio, clipped, kl, distill, gap (whenever there is a
    teacher), gate, advantages, rlsd_weight (1 without RLSD).
    """
    check_choice("distill", distill, DISTILL_KINDS)
    old = logp.detach() if old_logp is None else old_logp
    zeros = torch.zeros_like(logp.detach())
    terms = {"pg": zeros, "ratio": torch.ones_like(zeros), "clipped": zeros.bool(), "kl": zeros,
             "distill": zeros, "gap": zeros, "gate": zeros, "rlsd_weight": torch.ones_like(zeros)}
    if teacher_logp is not None:
        terms["gap"] = (teacher_logp - logp).detach()
    if rlsd_coef > 0:
        if teacher_logp is None:
            raise ValueError("rlsd_coef > 0 needs teacher log-probs (teacher_hidden)")
        advantages, info = rlsd_advantages(advantages, teacher_logp, old, coef=rlsd_coef, clip=clip)
        terms["rlsd_weight"] = info["weight"]
    terms["advantages"] = advantages.detach()
    objective = torch.zeros_like(logp)
    if pg_coef != 0:
        pg, info = policy_loss(logp, old, advantages, clip=clip, clip_high=clip_high)
        objective = objective + agg_weight * (pg_coef * pg)
        terms["pg"], terms["ratio"], terms["clipped"] = pg.detach(), info["ratio"], info["clipped"]
    if kl_coef != 0 or ref_logp is not None:
        if ref_logp is None:
            raise ValueError("kl_coef != 0 needs ref_logp")
        kl, _ = k3_kl(logp, ref_logp)
        terms["kl"] = kl.detach()
        if kl_coef != 0:
            objective = objective + agg_weight * (kl_coef * kl)
    if entropy_coef != 0:
        bonus, _ = entropy_bonus(entropy, coef=entropy_coef)
        objective = objective + agg_weight * bonus
    if teacher_logp is not None and distill != "none":
        if distill == "sdar":
            g, _ = sdar_gate(teacher_logp - logp.detach(), entropy, gate=gate, beta=beta, vocab_size=vocab_size)
            d, info = sdar_token_loss(logp, teacher_logp, gate=g, estimator=estimator)
            terms["gate"] = g
        else:
            d, info = skill_sd_loss(logp, teacher_logp, old, max_log_ratio=max_log_ratio)
        terms["distill"] = d.detach()
        if sdar_coef != 0:
            objective = objective + distill_weight * (sdar_coef * d)
    return objective, terms
