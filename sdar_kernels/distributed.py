"""Vocab-parallel LM heads: the shard layout and the collectives of the fused ops (DESIGN §2).

When the head ``W`` [V, H] is split along the vocabulary over a ``torch.distributed`` group, rank r
holds rows [vocab_start_r, vocab_start_r + V_r) and every rank holds the same hidden states and
labels (global token ids). Each rank computes the row statistics of its shard, (m, s, t, zy) about
its own max, and the global statistics follow from two all-reduces of O(N) floats:

    M = max_r m_r                                   (all-reduce MAX, [N])
    S, T, Z = Σ_r (c_r s_r, c_r (t_r + (m_r − M) s_r), zy_r),  c_r = e^{m_r − M}
                                                    (one all-reduce SUM of a stacked [3, N])

(``stats.shift_stats``; zy is 0 off the shard holding the label, so it sums). The backward runs the
backend's recomputing gradient with the *global* lse and entropy: that gives this rank's dW shard
exactly and its share of dh = Σ_j dz_j W_j / T over the local columns, so dh is all-reduced (SUM,
O(N·H), the usual vocab-parallel cost). No [N, V] tensor is ever communicated.

The full-distribution divergences (``divergence.py``) follow the same pattern: the student's and the
teacher's (m, s) merge into global log-normalisers (``all_reduce_logsumexp``); every divergence is then a
sum over columns of terms that are local given those normalisers (for JSD_β the mixture M_j is per
column too), so each rank's partial row sums are all-reduced (SUM, O(N)) into the global D_t (and
KL(p_S‖M) for the JSD gradient). ∂D_t/∂z_S,j needs only those O(N) global values, so dW stays local and
dh is all-reduced as above.

Conventions: every rank must call the op with the same hidden states, labels and options, and
back-propagate the same loss (the loss is replicated, as in Megatron-style vocab-parallel cross
entropy); ``hidden.grad`` is then the full gradient on every rank and ``weight.grad`` the local
shard's gradient. A rank that raises (bad input) leaves the others waiting in the next collective
until the process group's timeout. The naive implementations do the same with local fp32 logits
and differentiable collectives (``sum_over_group``, ``enter_group``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .stats import combine_stats, shift_stats


def vocab_layout(weight: Tensor, process_group, vocab_start: int | None,
                 vocab_size: int | None) -> tuple[int, int]:
    """(vocab_start, global vocab_size) of this rank's shard ``weight`` [V_local, H].

    Without a group the head is whole: (0, V) and ``vocab_start``/``vocab_size`` must be None or
    agree with that. With a group, a missing value is derived from one all-gather of the shard sizes:
    shards are taken to be laid out contiguously in rank order (rank r starts at Σ_{q<r} V_q, i.e.
    rank × V_local for equal shards) and V = Σ_r V_r. Passing both values skips that collective and
    allows any layout (e.g. a rank holding the top of the vocabulary); the shards must tile [0, V).
    """
    v_local = weight.shape[0]
    for name, value in (("vocab_start", vocab_start), ("vocab_size", vocab_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
    if process_group is None:
        if vocab_start not in (None, 0) or vocab_size not in (None, v_local):
            raise ValueError(f"vocab_start={vocab_start!r} / vocab_size={vocab_size!r} describe a vocabulary "
                             f"shard; pass process_group= for a vocab-parallel head (weight has {v_local} rows)")
        return 0, v_local
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group was given but torch.distributed is not initialised")
    if v_local < 1:
        raise ValueError("weight must hold at least one vocabulary row on every rank of process_group")
    if vocab_start is None or vocab_size is None:
        world = dist.get_world_size(process_group)
        mine = torch.tensor([v_local], dtype=torch.int64, device=weight.device)
        sizes = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(sizes, mine, group=process_group)
        sizes = [int(x.item()) for x in sizes]
        rank = dist.get_rank(process_group)
        vocab_start = sum(sizes[:rank]) if vocab_start is None else vocab_start
        vocab_size = sum(sizes) if vocab_size is None else vocab_size
    if vocab_start + v_local > vocab_size:
        raise ValueError(f"shard [vocab_start={vocab_start}, +{v_local}) exceeds vocab_size={vocab_size}")
    return vocab_start, vocab_size


def all_reduce_stats(m: Tensor, s: Tensor, t: Tensor, zy: Tensor, process_group) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Global (m, s, t, zy) [N] from this shard's, with one all-reduce MAX and one SUM of [3, N]."""
    m_global = m.clone()
    dist.all_reduce(m_global, op=dist.ReduceOp.MAX, group=process_group)
    s, t = shift_stats(m, s, t, m_global)
    packed = torch.stack([s, t, zy])  # (3, N)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=process_group)
    return m_global, packed[0], packed[1], packed[2]


def all_reduce_logsumexp(m: Tensor, s: Tensor, process_group) -> tuple[Tensor, Tensor]:
    """Global (M, S) from this shard's row max m and s = Σ_local e^{z − m}: M = max_r m_r and
    S = Σ_r e^{m_r − M} s_r (one all-reduce MAX and one SUM of the shape of m; any shape)."""
    m_global = m.clone()
    dist.all_reduce(m_global, op=dist.ReduceOp.MAX, group=process_group)
    s_global = s * torch.exp(m - m_global)
    dist.all_reduce(s_global, op=dist.ReduceOp.SUM, group=process_group)
    return m_global, s_global


def all_reduce_sum(x: Tensor, process_group) -> Tensor:
    """Σ over the group of x (a new tensor); bf16/fp16 are summed in fp32 and cast back."""
    acc = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x.clone()
    dist.all_reduce(acc, op=dist.ReduceOp.SUM, group=process_group)
    return acc.to(x.dtype)


class _SumOverGroup(torch.autograd.Function):
    """Forward: all-reduce SUM. Backward: identity — the loss built on the sum is replicated on every
    rank, so each rank's upstream gradient already is ∂L/∂(sum) = ∂L/∂(its own part)."""

    @staticmethod
    def forward(ctx, x, process_group):
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=process_group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _EnterGroup(torch.autograd.Function):
    """Forward: identity on the replicated hidden states. Backward: all-reduce SUM of the partial
    gradients each rank computed through its own vocabulary shard."""

    @staticmethod
    def forward(ctx, x, process_group):
        ctx.process_group = process_group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum(grad, ctx.process_group), None


def sum_over_group(x: Tensor, process_group) -> Tensor:
    """Differentiable all-reduce SUM for a replicated loss: forward Σ_r x_r, backward the identity (each
    rank's upstream gradient, the same on every rank, is ∂L/∂x_r). Its result must only feed replicated
    computations; a replicated tensor feeding shard-local ones goes through ``enter_group``."""
    return _SumOverGroup.apply(x, process_group)


def enter_group(x: Tensor, process_group) -> Tensor:
    """Differentiable entry of a replicated tensor into shard-local computations: forward the identity,
    backward the all-reduce SUM of the partial gradients of the ranks' local consumers."""
    return _EnterGroup.apply(x, process_group)


def naive_sharded_logprobs(hidden: Tensor, weight: Tensor, labels: Tensor, valid: Tensor, *, temperature: float,
                           vocab_start: int, process_group) -> tuple[Tensor, Tensor]:
    """The naive path on a vocabulary shard: fp32 (logp, entropy) [N] through autograd.

    Materialises this shard's fp32 logits [N, V_local] and merges the shard statistics with the same
    all-reduces as the fused path, as differentiable collectives (``_SumOverGroup``,
    ``_EnterGroup``). The max is detached: lse and entropy do not depend on the shift.
    """
    h = _EnterGroup.apply(hidden, process_group)
    z = (h @ weight.t()).float() / temperature  # (N, V_local)
    m = z.detach().amax(1)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=process_group)
    shifted = z - m.unsqueeze(1)
    e = torch.exp(shifted)
    local = labels - vocab_start
    in_range = valid & (local >= 0) & (local < weight.shape[0])
    zy = z.gather(1, local.clamp(0, weight.shape[0] - 1).unsqueeze(1)).squeeze(1)
    zy = torch.where(in_range, zy, torch.zeros_like(zy))
    packed = _SumOverGroup.apply(torch.stack([e.sum(1), (shifted * e).sum(1), zy]), process_group)  # (3, N)
    _, logp, entropy = combine_stats(m, packed[0], packed[1], packed[2], valid)
    return logp, entropy
