"""RL maths of the loop as small pure functions: tensors and keyword-only hyper-parameters in,
``(tensor, metrics)`` or a tensor out; no config objects inside.

Shapes: N = turn-samples of a step, (B, T) = samples × response tokens (padded, ``mask`` marks real
tokens). Every function here is also the reference for the hand-computed tests in
``tests/test_sdar_algos.py``; the trainer computes the same losses through ``sdar_kernels`` on hidden
states (``sdar.train``). The per-token terms themselves (clipped PG, k3 KL, gates, Skill-SD, RLSD
reweighting, aggregation) live in ``sdar_kernels.losses``; this module maps a method name onto them.

Methods (DESIGN §1), as switches of one objective
``L = pg_coef·L_PG(clip) − c_H·H̄ + c_KL·KL_k3 + λ·L_distill``:

| method       | PG | teacher | distillation term                  | notes                                  |
|--------------|----|---------|------------------------------------|----------------------------------------|
| grpo         | 1  | no      | —                                  | λ = 0                                  |
| sdar         | 1  | yes     | g·(sg(lT) − lS), gate gap/entropy/soft_or | λ = 0.01, β = 5                 |
| grpo_opsd    | 1  | yes     | same, gate ``none`` (g ≡ 0.5)      |                                        |
| opsd         | 0  | yes     | same, gate as configured           | no policy-gradient term                |
| skill_grpo   | 1  | no      | —                                  | skills in the *student* prompt         |
| skill_sd     | 1  | yes     | ρ·k3(lS − sg(lT)), ρ = exp(min(lS − l_old, 10)) | λ = 0.001                 |
| rlsd         | 1  | yes     | — (advantages reweighted by the teacher) | λ = 0.5 → 0 over 100 steps       |
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

METHODS = ("grpo", "sdar", "grpo_opsd", "opsd", "skill_grpo", "skill_sd", "rlsd")


# ----------------------------------------------------------------------------- method switches
@dataclass(frozen=True)
class MethodSpec:
    """What a method needs from the loop (derived once from the method name)."""

    pg_coef: float  # weight of the clipped policy-gradient term
    teacher: bool  # run the privileged-context teacher pass
    student_skills: bool  # skills in the student prompt (skill_grpo)
    distill: str  # "sdar" (gated gap through sdar_kernels), "skill_sd", "none"
    gate: str | None  # forced gate (grpo_opsd -> "none"); None -> the configured gate
    reweight_advantages: bool  # rlsd


def method_spec(method: str) -> MethodSpec:
    table = {
        "grpo": MethodSpec(1.0, False, False, "none", None, False),
        "sdar": MethodSpec(1.0, True, False, "sdar", None, False),
        "grpo_opsd": MethodSpec(1.0, True, False, "sdar", "none", False),
        "opsd": MethodSpec(0.0, True, False, "sdar", None, False),
        "skill_grpo": MethodSpec(1.0, False, True, "none", None, False),
        "skill_sd": MethodSpec(1.0, True, False, "skill_sd", None, False),
        "rlsd": MethodSpec(1.0, True, False, "none", None, True),
    }
    if method not in table:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    return table[method]


def rlsd_lambda(step: int, *, lam0: float, decay_steps: int) -> float:
    """RLSD's teacher weight: ``lam0`` at step 0, linearly to 0 at ``decay_steps`` (then 0)."""
    if decay_steps <= 0:
        return 0.0
    return lam0 * max(0.0, 1.0 - step / decay_steps)


# ----------------------------------------------------------------------------- advantages
def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, norm_by_std: bool = True,
                     eps: float = 1e-6) -> tuple[torch.Tensor, dict]:
    """GRPO advantages over all turn-samples of each group.

    Args:
        rewards: (N,) float, one per turn-sample (its episode's reward minus its format penalty).
        group_ids: (N,) int, samples of one task's G episodes share an id.
        norm_by_std: A = (r − mean_g)/(std_g + eps) (std unbiased, as torch.std); False -> Dr.GRPO,
            A = r − mean_g.
    Returns:
        (N,) float32 advantages and metrics. A singleton group has std 0 by definition and gets A = 0
        (no baseline, no signal); a zero-variance group gets A = 0.
    """
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards, group_ids: expected equal 1-D shapes, got {tuple(rewards.shape)} "
                         f"and {tuple(group_ids.shape)}")
    r = rewards.double()  # (N,)
    _, inverse = torch.unique(group_ids, return_inverse=True)  # (N,) group index
    n_groups = int(inverse.max()) + 1 if r.numel() else 0
    count = torch.zeros(n_groups, dtype=r.dtype).index_add_(0, inverse, torch.ones_like(r))  # (G,)
    mean = torch.zeros(n_groups, dtype=r.dtype).index_add_(0, inverse, r) / count  # (G,)
    sq = torch.zeros(n_groups, dtype=r.dtype).index_add_(0, inverse, (r - mean[inverse]) ** 2)  # (G,)
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))  # (G,)
    adv = r - mean[inverse]  # (N,)
    if norm_by_std:
        adv = adv / (std[inverse] + eps)
    adv = torch.where(count[inverse] > 1, adv, torch.zeros_like(adv))
    metrics = {"adv_abs_mean": float(adv.abs().mean()) if adv.numel() else 0.0,
               "zero_var_group_frac": float((std == 0).double().mean()) if n_groups else 0.0}
    return adv.float(), metrics


def pooled_group_advantages(rewards: list[torch.Tensor], group_ids: list[torch.Tensor], *, part: int,
                            norm_by_std: bool = True, eps: float = 1e-6) -> tuple[torch.Tensor, dict]:
    """GRPO advantages of one part of a batch whose groups are spread over several parts (ranks).

    Args:
        rewards, group_ids: one (N_k,) tensor per part (all ranks' all-gathered (group, reward) pairs,
            in rank order; group ids are global).
        part: the index of the part whose advantages are returned.
    Returns:
        (N_part,) float32 advantages — those :func:`group_advantages` gives these samples on the whole
        batch — and the whole batch's metrics.
    """
    if len(rewards) != len(group_ids) or not 0 <= part < len(rewards):
        raise ValueError(f"rewards, group_ids, part: expected equally many parts and 0 <= part < {len(rewards)}, "
                         f"got {len(rewards)}, {len(group_ids)}, {part}")
    adv, metrics = group_advantages(torch.cat(rewards), torch.cat(group_ids), norm_by_std=norm_by_std, eps=eps)
    start = sum(len(r) for r in rewards[:part])
    return adv[start : start + len(rewards[part])], metrics  # (N_part,)


# ----------------------------------------------------------------------------- the loss switches
def loss_options(method: str, *, lam: float, gate: str = "gap", step: int = 0,
                 rlsd_decay_steps: int = 100) -> dict:
    """Keyword arguments of ``sdar_kernels.grpo_sdar_loss`` (and ``losses.grpo_token_objective``)
    that turn the one objective into ``method``: pg_coef, sdar_coef, gate, distill, rlsd_coef.

    ``lam`` is the method's λ (for rlsd its value at step 0, annealed by :func:`rlsd_lambda`)."""
    spec = method_spec(method)
    rlsd = rlsd_lambda(step, lam0=lam, decay_steps=rlsd_decay_steps) if spec.reweight_advantages else 0.0
    return {"pg_coef": spec.pg_coef, "sdar_coef": lam if spec.distill != "none" else 0.0,
            "gate": spec.gate or gate, "distill": spec.distill, "rlsd_coef": rlsd}


def token_objective(method: str, *, logp: torch.Tensor, entropy: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, old_logp: torch.Tensor | None = None, teacher_logp: torch.Tensor | None = None,
                    ref_logp: torch.Tensor | None = None, lam: float = 0.0, gate: str = "gap", beta: float = 5.0,
                    clip: float = 0.2, agg: str = "token-mean", kl_coef: float = 0.0, entropy_coef: float = 0.0,
                    step: int = 0, rlsd_decay_steps: int = 100,
                    vocab_size: int | None = None) -> tuple[torch.Tensor, dict]:
    """The per-token objective f (B, T) of ``method`` on log-probs, loss = Σ f — the log-prob level
    form of what the trainer computes through ``sdar_kernels`` on hidden states. PG, KL and entropy
    are weighted by ``agg``; the distillation term is a token mean (DESIGN §1)."""
    from sdar_kernels import losses

    opts = loss_options(method, lam=lam, gate=gate, step=step, rlsd_decay_steps=rlsd_decay_steps)
    a = advantages if advantages.ndim == logp.ndim else advantages[..., None].expand_as(logp)  # (B, T)
    return losses.grpo_token_objective(
        logp, entropy, advantages=a, agg_weight=losses.agg_weights(mask, agg),
        distill_weight=losses.agg_weights(mask, "token-mean"), old_logp=old_logp, ref_logp=ref_logp,
        teacher_logp=teacher_logp if method_spec(method).teacher else None, clip=clip, kl_coef=kl_coef,
        entropy_coef=entropy_coef, beta=beta, vocab_size=vocab_size, **opts)


__all__ = ["METHODS", "MethodSpec", "group_advantages", "loss_options", "method_spec", "pooled_group_advantages",
           "rlsd_lambda",
           "token_objective"]
