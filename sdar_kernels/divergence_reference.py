"""The naive divergence implementation (``impl="naive"``): materialise fp32 logits, let autograd differentiate.

It holds [N, V] student and teacher logits (and autograd's softmax temporaries), so it is the memory
and time baseline, and the readable statement of the maths that the fused paths must reproduce.
"""

from __future__ import annotations

import math

import torch

from .divergence import DivergenceOptions


def divergence_from_logits(z_s: torch.Tensor, z_t: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-row D from (already temperature-scaled) logits (N, K); the teacher logits are detached here."""
    lp_s = torch.log_softmax(z_s, dim=-1)
    lp_t = torch.log_softmax(z_t.detach(), dim=-1)
    if kind == "reverse_kl":  # KL(p_S ‖ p_T)
        return (lp_s.exp() * (lp_s - lp_t)).sum(-1)
    if kind == "forward_kl":  # KL(p_T ‖ p_S)
        return (lp_t.exp() * (lp_t - lp_s)).sum(-1)
    # JSD_β: M = β p_T + (1 − β) p_S; D = β KL(p_T ‖ M) + (1 − β) KL(p_S ‖ M)   (0 < β < 1 here)
    lp_m = torch.logaddexp(lp_t + math.log(beta), lp_s + math.log1p(-beta))
    return beta * (lp_t.exp() * (lp_t - lp_m)).sum(-1) + (1.0 - beta) * (lp_s.exp() * (lp_s - lp_m)).sum(-1)


def naive_divergence_rows(hs: torch.Tensor, ht: torch.Tensor, weight: torch.Tensor,
                          opts: DivergenceOptions) -> torch.Tensor:
    """(N,) fp32 D_t for hidden rows hs, ht (N, H) and head weight (V, H); grad through hs and weight."""
    w32 = weight.float()
    z_s = hs.float() @ w32.t() / opts.temperature  # (N, V)
    z_t = (ht.detach().float() @ w32.detach().t()) / opts.temperature  # (N, V), no graph
    if opts.top_k is not None and opts.top_k < weight.shape[0]:
        idx = z_t.topk(opts.top_k, dim=-1).indices  # (N, k) the teacher's top-k set, no gradient
        z_s, z_t = z_s.gather(1, idx), z_t.gather(1, idx)
    return divergence_from_logits(z_s, z_t, opts.kind, opts.beta)
