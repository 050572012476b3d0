"""Autograd glue for the Triton divergences (``impl="triton"``); kernels live in ``ops/triton_divergence.py``.

Forward: pass 1 (row statistics; the KLs are finished from them), plus pass 2 for JSD. Saved state is
O(N): (m, log s) of both sides and one row value (D for reverse KL, KL(p_S‖M) for JSD). Backward always recomputes
the logit tiles of both sides (the fused path holds no gradient buffers between forward and backward).
"""

from __future__ import annotations

import torch

from .divergence import DivergenceOptions
from .ops.triton_divergence import divergence_backward, divergence_jsd_terms, divergence_stats


def triton_divergence_rows(hs, ht, weight, opts: DivergenceOptions):
    """(D (N,), pass-1 stats (6, N), row value for the backward) from the fused kernels."""
    stats = divergence_stats(hs, ht, weight, opts.temperature)
    if opts.kind == "reverse_kl":
        return stats[4], stats, stats[4]
    if opts.kind == "forward_kl":
        return stats[5], stats, stats[5]
    kl_sm, kl_tm = divergence_jsd_terms(hs, ht, weight, stats, opts.temperature, opts.beta)
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
        return (None if dh is None else dh.to(hs.dtype)), None, (None if dw is None else dw.to(weight.dtype)), \
            None, None
