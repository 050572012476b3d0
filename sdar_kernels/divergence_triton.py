"""Autograd glue for the Triton divergences (``impl="triton"``); kernels live in ``ops/triton_divergence.py``.

Forward: pass 1 (row statistics; the KLs are finished from them), plus pass 2 for JSD. Saved state is
O(N): (m, log s) of both sides and one row value (D for reverse KL, KL(p_S‖M) for JSD). Backward always recomputes
the logit tiles of both sides (the fused path holds no gradient buffers between forward and backward).

Vocab-parallel head (``opts.process_group``): the kernels run unchanged on this rank's shard. Pass 1's
per-shard statistics are merged into global ones in PyTorch (``_merge_shard_stats``: all-reduces of O(N));
pass 2 (JSD) and the backward are given the global (m, log s) rows, so their per-column terms are global
ones on local columns: JSD's partial sums are all-reduced, dW is this shard's, dh is all-reduced.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .divergence import DivergenceOptions
from .ops.triton_divergence import divergence_backward, divergence_jsd_terms, divergence_stats


def _merge_shard_stats(stats: torch.Tensor, group) -> torch.Tensor:
    """Pass 1's (6, N) statistics of this vocabulary shard → those of the whole vocabulary.

    The kernel leaves, per side, m, log s and KL_local = x/s − (m_S − m_T) − (log s_S − log s_T), where
    x_S = Σ_j e^{z_S,j − m_S}(z_S,j − z_T,j) (x_T likewise with the roles swapped). So x/s = KL_local +
    (m_S − m_T) + (log s_S − log s_T) is recovered here, and x rescales like s about the global max:
    with c_r = e^{m_r − M}, S = Σ_r c_r s_r and X = Σ_r c_r s_r (x/s)_r. Then, as in the kernel,
    KL(p_S‖p_T) = X_S/S_S − (M_S − M_T) − (log S_S − log S_T) and symmetrically for KL(p_T‖p_S).
    """
    m_s, ls_s, m_t, ls_t, kl_s, kl_t = stats.unbind(0)
    ratio_s = kl_s + (m_s - m_t) + (ls_s - ls_t)  # x_S / s_S of this shard
    ratio_t = kl_t + (m_t - m_s) + (ls_t - ls_s)  # x_T / s_T
    m, s = torch.stack([m_s, m_t]), torch.stack([ls_s, ls_t]).exp()  # (2, N)
    m_all = m.clone()
    dist.all_reduce(m_all, op=dist.ReduceOp.MAX, group=group)
    scaled = s * torch.exp(m - m_all)  # c_r s_r  (2, N)
    packed = torch.cat([scaled, scaled * torch.stack([ratio_s, ratio_t])])  # (4, N): S_S, S_T, X_S, X_T parts
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    log_s_all = packed[:2].log()
    ratio_all = packed[2:] / packed[:2]  # X / S per side
    (gm_s, gm_t), (gl_s, gl_t) = m_all.unbind(0), log_s_all.unbind(0)
    return torch.stack([gm_s, gl_s, gm_t, gl_t, ratio_all[0] - (gm_s - gm_t) - (gl_s - gl_t),
                        ratio_all[1] - (gm_t - gm_s) - (gl_t - gl_s)])


def triton_divergence_rows(hs, ht, weight, opts: DivergenceOptions):
    """(D (N,), pass-1 stats (6, N), row value for the backward) from the fused kernels (global values with a
    vocab-parallel head: every rank gets the same D and stats)."""
    group = opts.process_group
    stats = divergence_stats(hs, ht, weight, opts.temperature)
    if group is not None:
        stats = _merge_shard_stats(stats, group)
    if opts.kind == "reverse_kl":
        return stats[4], stats, stats[4]
    if opts.kind == "forward_kl":
        return stats[5], stats, stats[5]
    kl_sm, kl_tm = divergence_jsd_terms(hs, ht, weight, stats, opts.temperature, opts.beta)
    if group is not None:
        packed = torch.stack([kl_sm, kl_tm])  # (2, N) this shard's column sums
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        kl_sm, kl_tm = packed.unbind(0)
    return opts.beta * kl_tm + (1.0 - opts.beta) * kl_sm, stats, kl_sm


class TritonDivergenceFunction(torch.autograd.Function):
    """(hs (N,H), ht (N,H), weight (V,H), c (N,) fp32, opts) → Σ c_t D_t ("sum") or c_t D_t (N,) ("rows")."""

    @staticmethod
    def forward(ctx, hs, ht, weight, c, opts: DivergenceOptions):
        hs, ht, weight = hs.contiguous(), ht.contiguous(), weight.contiguous()
        d, stats, row_v = triton_divergence_rows(hs, ht, weight, opts)
        ctx.opts = opts
        ctx.save_for_backward(hs, ht, weight, c, stats, row_v)
        rows = torch.where(c != 0, d * c, torch.zeros_like(d))
        return rows.sum() if opts.mode == "sum" else rows

    @staticmethod
    def backward(ctx, grad_out):
        hs, ht, weight, c, stats, row_v = ctx.saved_tensors
        opts = ctx.opts
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        scale = torch.where(c != 0, grad_out.float() * c, torch.zeros_like(c)) / opts.temperature  # (N,)
        dh, dw = divergence_backward(hs, ht, weight, stats, row_v, scale, kind=opts.kind, beta=opts.beta,
                                     temperature=opts.temperature, need_dh=need_dh, need_dw=need_dw)
        if need_dh and opts.process_group is not None:
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=opts.process_group)  # Σ over shards of dz·W
        return (None if dh is None else dh.to(hs.dtype)), None, (None if dw is None else dw.to(weight.dtype)), \
            None, None
