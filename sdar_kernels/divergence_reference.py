"""The naive divergence implementation (``impl="naive"``): materialise fp32 logits, let autograd differentiate.

It holds [N, V] student and teacher logits (and autograd's softmax temporaries), so it is the memory
and time baseline, and the readable statement of the maths that the fused paths must reproduce. With a
vocab-parallel head (``naive_sharded_divergence_rows``) it holds this rank's [N, V_local] logits and
merges the shards through differentiable collectives.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .distributed import enter_group, sum_over_group
from .divergence import DivergenceOptions


def divergence_from_logits(z_s: torch.Tensor, z_t: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-row D from (already temperature-scaled) logits (N, K); the teacher logits are detached here."""
    return divergence_from_logprobs(torch.log_softmax(z_s, dim=-1), torch.log_softmax(z_t.detach(), dim=-1),
                                    kind, beta)


def divergence_from_logprobs(lp_s: torch.Tensor, lp_t: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-row Σ_j of the divergence's terms over the columns of log-probs (N, K) (normalised over the
    whole vocabulary; every term is column-local, so on a vocabulary shard this is the shard's part)."""
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


def _sharded_log_softmax(z: torch.Tensor, process_group) -> torch.Tensor:
    """log p of this shard's columns (N, V_local) under the softmax over the whole vocabulary.

    The max is detached (log p does not depend on the shift). The global log Σ e^{z − m} feeds shard-local
    columns, so it enters the group through ``enter_group`` (its gradient is the sum of every rank's)."""
    m = z.detach().amax(1)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=process_group)
    shifted = z - m.unsqueeze(1)
    log_s = torch.log(sum_over_group(shifted.exp().sum(1), process_group))  # (N,) replicated: lse − m
    return shifted - enter_group(log_s, process_group).unsqueeze(1)


def naive_sharded_divergence_rows(hs: torch.Tensor, ht: torch.Tensor, weight: torch.Tensor,
                                  opts: DivergenceOptions) -> torch.Tensor:
    """(N,) fp32 global D_t on a vocab-parallel head: ``weight`` is this rank's (V_local, H) shard.

    Every rank returns the same D_t; ``hs`` receives the full gradient (all-reduced through
    ``enter_group``) and ``weight`` its shard's. top_k is refused before this point."""
    group = opts.process_group
    w32 = weight.float()
    z_s = enter_group(hs, group).float() @ w32.t() / opts.temperature  # (N, V_local)
    with torch.no_grad():
        lp_t = _sharded_log_softmax(ht.float() @ w32.t() / opts.temperature, group)  # (N, V_local), no graph
    lp_s = _sharded_log_softmax(z_s, group)
    return sum_over_group(divergence_from_logprobs(lp_s, lp_t, opts.kind, opts.beta), group)
