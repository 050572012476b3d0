"""Triton kernels (and their launchers) for full-vocabulary teacher–student divergences.

Three kernels, one mathematical object each:

* ``_div_stats_kernel`` (pass 1): per row block, streams vocabulary tiles of the student and teacher
  logits (same rows, same W tile, so both are in hand together) and keeps online statistics — the two
  normalisers and the two KL cross terms. No [N, V] is ever held.
* ``_div_jsd_kernel`` (pass 2, JSD only): the mixture log M = log(β p_T + (1 − β) p_S) does not decompose
  over tiles, so once both normalisers are known the tiles are recomputed and KL(p_T‖M), KL(p_S‖M) summed.
* ``_div_bwd_kernel``: recomputes a (rows × vocab) tile of both sides from the saved row statistics, forms
  dz = s_t · ∂D_t/∂z_S (s_t = upstream gradient × row coefficient / τ) and atomically adds dz·W into dh
  and dzᵀ·h_S into dW (fp32 buffers). Student rows only; the teacher gets no gradient.

All maths is fp32: tiles are loaded and converted to fp32 (under ``TRITON_INTERPRET=1`` bf16 arithmetic
is not trustworthy) and fp32 dots use ``input_precision="ieee"`` (no TF32). On a GPU with 16-bit inputs
the logit dots run on the native 16-bit inputs with fp32 accumulation (the products are exact in fp32),
and dz is rounded to the input dtype for the two gradient dots.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

# One fixed launch configuration (tl.dot needs tiles >= 16).
BLOCK_N = 16
BLOCK_V = 64
BLOCK_H = 32

KIND_IDS = {"reverse_kl": 0, "forward_kl": 1, "jsd": 2}


@triton.jit
def _logit_tiles(hs_ptr, ht_ptr, w_ptr, rows, rmask, cols, cmask, H, stride_h, stride_w,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, UPCAST: tl.constexpr):
    """Student and teacher logit tiles (BLOCK_N, BLOCK_V) in fp32 (masked rows/cols give 0)."""
    acc_s = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    acc_t = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        k = h0 + tl.arange(0, BLOCK_H)
        kmask = k < H
        hmask = rmask[:, None] & kmask[None, :]
        h_s = tl.load(hs_ptr + rows[:, None] * stride_h + k[None, :], mask=hmask, other=0.0)
        h_t = tl.load(ht_ptr + rows[:, None] * stride_h + k[None, :], mask=hmask, other=0.0)
        w = tl.load(w_ptr + cols[:, None] * stride_w + k[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        if UPCAST:
            w = tl.trans(w.to(tl.float32))
            acc_s = tl.dot(h_s.to(tl.float32), w, acc_s, input_precision="ieee")
            acc_t = tl.dot(h_t.to(tl.float32), w, acc_t, input_precision="ieee")
        else:
            w = tl.trans(w)
            acc_s = tl.dot(h_s, w, acc_s)
            acc_t = tl.dot(h_t, w, acc_t)
    return acc_s, acc_t


@triton.jit
def _logaddexp(a, b):
    mx = tl.maximum(a, b)
    return mx + tl.log(1.0 + tl.exp(-tl.abs(a - b)))


@triton.jit
def _div_stats_kernel(hs_ptr, ht_ptr, w_ptr, stats_ptr,
                      N, V, H, stride_h, stride_w, inv_tau,
                      BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, UPCAST: tl.constexpr):
    # Online statistics per row (z = logits/τ, running max m, rescaled sums):
    #   s_S = Σ_j e^{z_S,j − m_S},  x_S = Σ_j e^{z_S,j − m_S} (z_S,j − z_T,j)
    #   s_T = Σ_j e^{z_T,j − m_T},  x_T = Σ_j e^{z_T,j − m_T} (z_T,j − z_S,j)
    # Merge with a new tile whose max raises m to m' = max(m, max_tile z): every term already summed
    # carries e^{−m}, so s' = s·e^{m − m'} + Σ_tile e^{z − m'} and x' = x·e^{m − m'} + Σ_tile e^{z − m'}(…)
    # (the same factor α = e^{m − m'}, with m = −inf initially so α = 0). At the end lse = m + log s and
    #   Σ_j p_S,j (z_S,j − z_T,j) = x_S / s_S, so KL(p_S‖p_T) = x_S/s_S − lse_S + lse_T,
    #   Σ_j p_T,j (z_T,j − z_S,j) = x_T / s_T, so KL(p_T‖p_S) = x_T/s_T − lse_T + lse_S.
    # (log p_S,j − log p_T,j = (z_S,j − z_T,j) − lse_S + lse_T, and Σ_j p_S,j = 1.)
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    m_s = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    m_t = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s_s = tl.zeros((BLOCK_N,), tl.float32)
    s_t = tl.zeros((BLOCK_N,), tl.float32)
    x_s = tl.zeros((BLOCK_N,), tl.float32)
    x_t = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        cmask = cols < V
        z_s, z_t = _logit_tiles(hs_ptr, ht_ptr, w_ptr, rows, rmask, cols, cmask, H, stride_h, stride_w,
                                BLOCK_N, BLOCK_V, BLOCK_H, UPCAST)
        z_s = z_s * inv_tau
        z_t = z_t * inv_tau
        diff = tl.where(cmask[None, :], z_s - z_t, 0.0)  # z_S − z_T (0 on padded columns)
        z_s = tl.where(cmask[None, :], z_s, float("-inf"))  # padded columns add e^{−inf} = 0
        z_t = tl.where(cmask[None, :], z_t, float("-inf"))
        m_s_new = tl.maximum(m_s, tl.max(z_s, axis=1))
        m_t_new = tl.maximum(m_t, tl.max(z_t, axis=1))
        a_s = tl.exp(m_s - m_s_new)
        a_t = tl.exp(m_t - m_t_new)
        e_s = tl.exp(z_s - m_s_new[:, None])
        e_t = tl.exp(z_t - m_t_new[:, None])
        s_s = s_s * a_s + tl.sum(e_s, axis=1)
        s_t = s_t * a_t + tl.sum(e_t, axis=1)
        x_s = x_s * a_s + tl.sum(e_s * diff, axis=1)
        x_t = x_t * a_t - tl.sum(e_t * diff, axis=1)
        m_s = m_s_new
        m_t = m_t_new
    # KL(p_S‖p_T) = x_S/s_S − (m_S − m_T) − (log s_S − log s_T): grouping the maxima and the logs apart
    # keeps identical rows (and V = 1) exactly 0 instead of a rounding residue of lse_T − lse_S.
    log_s_s = tl.log(s_s)
    log_s_t = tl.log(s_t)
    # Saved as (m, log s) pairs, not lse = m + log s: later passes form log p = (z − m) − log s, which
    # keeps the near-max entries exact (z − lse loses |lse|·eps for large or very negative logits).
    tl.store(stats_ptr + rows, m_s, mask=rmask)
    tl.store(stats_ptr + N + rows, log_s_s, mask=rmask)
    tl.store(stats_ptr + 2 * N + rows, m_t, mask=rmask)
    tl.store(stats_ptr + 3 * N + rows, log_s_t, mask=rmask)
    tl.store(stats_ptr + 4 * N + rows, x_s / s_s - (m_s - m_t) - (log_s_s - log_s_t), mask=rmask)
    tl.store(stats_ptr + 5 * N + rows, x_t / s_t - (m_t - m_s) - (log_s_t - log_s_s), mask=rmask)


@triton.jit
def _div_jsd_kernel(hs_ptr, ht_ptr, w_ptr, stats_ptr, kl_sm_ptr, kl_tm_ptr,
                    N, V, H, stride_h, stride_w, inv_tau, log_beta, log_1m_beta,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, UPCAST: tl.constexpr):
    # Pass 2 of JSD_β: with lse_S, lse_T known, log p = z − lse per element and
    #   log M_j = logaddexp(log β + log p_T,j, log(1 − β) + log p_S,j),
    #   A = Σ_j p_S,j (log p_S,j − log M_j) = KL(p_S‖M),  B = Σ_j p_T,j (log p_T,j − log M_j) = KL(p_T‖M).
    # Padded columns load W = 0 (finite logits) and are removed from the sums with the column mask.
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    m_s = tl.load(stats_ptr + rows, mask=rmask, other=0.0)
    ls_s = tl.load(stats_ptr + N + rows, mask=rmask, other=0.0)
    m_t = tl.load(stats_ptr + 2 * N + rows, mask=rmask, other=0.0)
    ls_t = tl.load(stats_ptr + 3 * N + rows, mask=rmask, other=0.0)
    acc_a = tl.zeros((BLOCK_N,), tl.float32)
    acc_b = tl.zeros((BLOCK_N,), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        cmask = cols < V
        z_s, z_t = _logit_tiles(hs_ptr, ht_ptr, w_ptr, rows, rmask, cols, cmask, H, stride_h, stride_w,
                                BLOCK_N, BLOCK_V, BLOCK_H, UPCAST)
        lp_s = (z_s * inv_tau - m_s[:, None]) - ls_s[:, None]
        lp_t = (z_t * inv_tau - m_t[:, None]) - ls_t[:, None]
        lp_m = _logaddexp(lp_t + log_beta, lp_s + log_1m_beta)
        keep = rmask[:, None] & cmask[None, :]
        acc_a += tl.sum(tl.where(keep, tl.exp(lp_s) * (lp_s - lp_m), 0.0), axis=1)
        acc_b += tl.sum(tl.where(keep, tl.exp(lp_t) * (lp_t - lp_m), 0.0), axis=1)
    tl.store(kl_sm_ptr + rows, acc_a, mask=rmask)
    tl.store(kl_tm_ptr + rows, acc_b, mask=rmask)


@triton.jit
def _div_bwd_kernel(hs_ptr, ht_ptr, w_ptr, stats_ptr, row_ptr, scale_ptr, dh_ptr, dw_ptr,
                    N, V, H, stride_h, stride_w, inv_tau, one_m_beta, log_beta, log_1m_beta,
                    KIND: tl.constexpr, COMPUTE_DH: tl.constexpr, COMPUTE_DW: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, UPCAST: tl.constexpr):
    # dz_j = s_t · ∂D_t/∂z_S,j (s_t already holds the upstream gradient × row coefficient / τ):
    #   KIND 0 reverse KL: p_S,j (log p_S,j − log p_T,j − D)        (row value = D)
    #   KIND 1 forward KL: p_S,j − p_T,j
    #   KIND 2 JSD_β:      (1 − β) p_S,j (log p_S,j − log M_j − A)   (row value = A = KL(p_S‖M))
    # then dh[rows] += dz · W[cols] and dW[cols] += dzᵀ · h_S[rows] (fp32 atomics over vocab/row tiles).
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    cmask = cols < V
    z_s, z_t = _logit_tiles(hs_ptr, ht_ptr, w_ptr, rows, rmask, cols, cmask, H, stride_h, stride_w,
                            BLOCK_N, BLOCK_V, BLOCK_H, UPCAST)
    m_s = tl.load(stats_ptr + rows, mask=rmask, other=0.0)
    ls_s = tl.load(stats_ptr + N + rows, mask=rmask, other=0.0)
    m_t = tl.load(stats_ptr + 2 * N + rows, mask=rmask, other=0.0)
    ls_t = tl.load(stats_ptr + 3 * N + rows, mask=rmask, other=0.0)
    row_v = tl.load(row_ptr + rows, mask=rmask, other=0.0)
    scale = tl.load(scale_ptr + rows, mask=rmask, other=0.0)
    lp_s = (z_s * inv_tau - m_s[:, None]) - ls_s[:, None]
    lp_t = (z_t * inv_tau - m_t[:, None]) - ls_t[:, None]
    p_s = tl.exp(lp_s)
    if KIND == 0:
        dz = p_s * (lp_s - lp_t - row_v[:, None])
    elif KIND == 1:
        dz = p_s - tl.exp(lp_t)
    else:
        lp_m = _logaddexp(lp_t + log_beta, lp_s + log_1m_beta)
        dz = one_m_beta * p_s * (lp_s - lp_m - row_v[:, None])
    dz = tl.where(rmask[:, None] & cmask[None, :], dz * scale[:, None], 0.0)  # (BLOCK_N, BLOCK_V) fp32
    for h0 in range(0, H, BLOCK_H):
        k = h0 + tl.arange(0, BLOCK_H)
        kmask = k < H
        if COMPUTE_DH:
            w = tl.load(w_ptr + cols[:, None] * stride_w + k[None, :], mask=cmask[:, None] & kmask[None, :],
                        other=0.0)
            if UPCAST:
                dh_blk = tl.dot(dz, w.to(tl.float32), input_precision="ieee")
            else:
                dh_blk = tl.dot(dz.to(w.dtype), w)
            tl.atomic_add(dh_ptr + rows[:, None] * H + k[None, :], dh_blk, mask=rmask[:, None] & kmask[None, :])
        if COMPUTE_DW:
            h_s = tl.load(hs_ptr + rows[:, None] * stride_h + k[None, :], mask=rmask[:, None] & kmask[None, :],
                          other=0.0)
            if UPCAST:
                dw_blk = tl.dot(tl.trans(dz), h_s.to(tl.float32), input_precision="ieee")
            else:
                dw_blk = tl.dot(tl.trans(dz.to(h_s.dtype)), h_s)
            tl.atomic_add(dw_ptr + cols[:, None] * H + k[None, :], dw_blk, mask=cmask[:, None] & kmask[None, :])


def _upcast(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or os.environ.get("TRITON_INTERPRET", "0") == "1"


def divergence_stats(hs: torch.Tensor, ht: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """Pass 1. hs, ht (N, H), weight (V, H) contiguous, one dtype. Returns fp32 stats (6, N): rows
    m_S, log s_S, m_T, log s_T (lse = m + log s of logits / τ), KL(p_S‖p_T), KL(p_T‖p_S)."""
    n, h = hs.shape
    v = weight.shape[0]
    stats = torch.empty(6, n, dtype=torch.float32, device=hs.device)
    if n == 0:
        return stats
    _div_stats_kernel[(triton.cdiv(n, BLOCK_N),)](
        hs, ht, weight, stats, n, v, h, hs.stride(0), weight.stride(0), 1.0 / temperature,
        BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, BLOCK_H=BLOCK_H, UPCAST=_upcast(hs.dtype))
    return stats


def divergence_jsd_terms(hs, ht, weight, stats, temperature: float, beta: float):
    """Pass 2 of JSD_β (0 < β < 1). Returns fp32 (N,) KL(p_S‖M), KL(p_T‖M), M = β p_T + (1 − β) p_S."""
    n, h = hs.shape
    v = weight.shape[0]
    out = torch.empty(2, n, dtype=torch.float32, device=hs.device)
    if n == 0:
        return out.unbind(0)
    _div_jsd_kernel[(triton.cdiv(n, BLOCK_N),)](
        hs, ht, weight, stats, out[0], out[1], n, v, h, hs.stride(0), weight.stride(0),
        1.0 / temperature, math.log(beta), math.log1p(-beta),
        BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, BLOCK_H=BLOCK_H, UPCAST=_upcast(hs.dtype))
    return out.unbind(0)


def divergence_backward(hs, ht, weight, stats, row_value, scale, *, kind: str, beta: float,
                        temperature: float, need_dh: bool, need_dw: bool):
    """dh (N, H) fp32 or None and dW (V, H) fp32 or None for dz_t = scale_t · ∂D_t/∂z_S (z = logits/τ).

    ``stats`` is pass 1's (6, N) output; ``scale`` (N,) fp32 must already include 1/τ; ``row_value`` is
    D (reverse KL), A = KL(p_S‖M) (JSD) or unused (forward KL)."""
    n, h = hs.shape
    v = weight.shape[0]
    dh = torch.zeros(n, h, dtype=torch.float32, device=hs.device) if need_dh else None
    dw = torch.zeros(v, h, dtype=torch.float32, device=hs.device) if need_dw else None
    if n == 0 or not (need_dh or need_dw):
        return dh, dw
    dummy = torch.empty(1, dtype=torch.float32, device=hs.device)
    log_b = math.log(beta) if 0.0 < beta < 1.0 else 0.0
    log_1mb = math.log1p(-beta) if 0.0 < beta < 1.0 else 0.0
    _div_bwd_kernel[(triton.cdiv(n, BLOCK_N), triton.cdiv(v, BLOCK_V))](
        hs, ht, weight, stats, row_value, scale, dh if need_dh else dummy, dw if need_dw else dummy,
        n, v, h, hs.stride(0), weight.stride(0), 1.0 / temperature, 1.0 - beta, log_b, log_1mb,
        KIND=KIND_IDS[kind], COMPUTE_DH=need_dh, COMPUTE_DW=need_dw,
        BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, BLOCK_H=BLOCK_H, UPCAST=_upcast(hs.dtype))
    return dh, dw
