"""Triton kernels and their launchers for fused log-probabilities and entropy over a (sharded) LM head.

Two launchers, tested on their own (tests/test_triton_launchers.py) and called by the autograd layer:

* ``row_stats``: one pass over the vocabulary for student and teacher rows together, returning per-row
  online softmax statistics ``m, s, t`` and the fp32 target logit ``zy``.
* ``grad``: the recomputing backward for one segment, returning ``dh`` and/or ``dW``.

Neither ever holds a ``[N, V]`` tensor. Kernels keep every statistic in fp32. On CUDA the GEMM tiles use
``tl.dot`` on the native bf16/fp16 operands with an fp32 accumulator (fp32 inputs use IEEE fp32 dots, not
TF32). Under ``TRITON_INTERPRET=1`` (CPU tests) the operands are converted to fp32 before ``tl.dot``,
because the interpreter's bf16/fp16 arithmetic is not trustworthy; the ``UPCAST`` constexpr selects this.
See docs/GPU_NOTES.md for the design choices and what must be measured on a GPU.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["row_stats", "grad", "STRATEGIES", "INTERPRET"]

# Decided once, at import, exactly as ``triton.jit`` decides whether it builds interpreted functions.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Default launch configurations: GPU-sensible on CUDA (to be tuned in issue 7), tiny under the interpreter
# so that the CPU tests stay fast. tl.dot needs every block dimension >= 16.
# bf16/fp16 forward: block_n 256 measured 38.9 ms vs 56.6 ms for 128 x 128 (H200, H 4096, 8k + 8k rows,
# V 151,936; benchmarks/results/gpu_h200/run1_tune_gpu.md).
_FWD_CUDA = dict(block_m=128, block_n=256, block_k=64, num_warps=8, num_stages=3)
_FWD_CUDA_FP32 = dict(block_m=64, block_n=128, block_k=32, num_warps=8, num_stages=3)
_BWD_CUDA = dict(block_m=128, block_n=128, block_k=64, group_m=8, num_warps=8, num_stages=3)
# The workspace / two_pass dz kernel alone: 128 x 256 tiles measured 58.0 ms vs 62.3 ms for the whole
# "workspace" backward (H200, H 4096, N 8k; benchmarks/results/gpu_h200/run2_tune_gpu.md).
_DZ_CUDA = dict(block_m=128, block_n=256, block_k=64, group_m=8, num_warps=8, num_stages=3)
_BWD_CUDA_FP32 = dict(block_m=64, block_n=64, block_k=32, group_m=8, num_warps=8, num_stages=2)
_FWD_INTERP = dict(block_m=16, block_n=32, block_k=16, num_warps=4, num_stages=1)
_BWD_INTERP = dict(block_m=16, block_n=32, block_k=16, group_m=2, num_warps=4, num_stages=1)


# ----------------------------------------------------------------------------------------------------------
# Forward: per-row online statistics.
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _row_stats_kernel(
    h0_ptr, h1_ptr, y0_ptr, y1_ptr, w_ptr,  # segment 0 / 1 hidden rows and labels, weight [V, H]
    m_ptr, s_ptr, t_ptr, zy_ptr,  # outputs: m/s/t are [n_splits, N0 + N1], zy is [N0 + N1]
    N0, N1, V, H, vocab_start, inv_temp,
    stride_h0, stride_h1, stride_w,  # row strides (the H dimension is contiguous)
    tiles_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Grid: axis 0 = row blocks of segment 0 followed by those of segment 1; axis 1 = vocabulary splits.
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    n_blocks0 = tl.cdiv(N0, BLOCK_M)
    in_seg1 = pid_m >= n_blocks0
    # Pick the segment with selects (not if/else): Triton may specialise an integer argument equal to 1 as a
    # constexpr, and branches assigning a constexpr in one arm and a tensor in the other do not compile.
    h_ptr = tl.where(in_seg1, h1_ptr, h0_ptr)
    y_ptr = tl.where(in_seg1, y1_ptr, y0_ptr)
    stride_h = tl.where(in_seg1, stride_h1, stride_h0).to(tl.int64)
    n_rows = tl.where(in_seg1, N1, N0)
    block = tl.where(in_seg1, pid_m - n_blocks0, pid_m)
    out_base = tl.where(in_seg1, N0, 0)
    n_total = N0 + N1

    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_rows
    rows64 = rows.to(tl.int64)
    out_rows = out_base + rows64
    offs_k = tl.arange(0, BLOCK_K)
    h_rows = h_ptr + rows64[:, None] * stride_h  # [BM, 1] row pointers

    # Target logit z_y as an fp32 dot of the hidden row and the weight row of the label (only split 0 does it).
    # Labels outside [vocab_start, vocab_start + V) (other shards, negative ignore_index) give 0 and are never
    # used as an address: their row index is replaced by 0 and their loads are masked off.
    if pid_v == 0:
        labels = tl.load(y_ptr + rows64, mask=row_mask, other=-1)
        local = labels - vocab_start
        lab_ok = row_mask & (local >= 0) & (local < V)
        w_rows_y = w_ptr + tl.where(lab_ok, local, 0).to(tl.int64)[:, None] * stride_w
        zy = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < H
            hk = tl.load(h_rows + ks[None, :], mask=row_mask[:, None] & k_ok[None, :], other=0.0)
            wk = tl.load(w_rows_y + ks[None, :], mask=lab_ok[:, None] & k_ok[None, :], other=0.0)
            zy += tl.sum(hk.to(tl.float32) * wk.to(tl.float32), axis=1)
        zy = tl.where(lab_ok, zy * inv_temp, 0.0)
        tl.store(zy_ptr + out_rows, zy, mask=row_mask)

    # Online statistics over this split's vocabulary tiles. For the tiles seen so far, with running max m:
    #   s = sum_j exp(z_j - m),   t = sum_j (z_j - m) exp(z_j - m).
    # When the max moves m_old -> m_new, every term gains the factor c = exp(m_old - m_new) and every
    # (z_j - m_new) = (z_j - m_old) + (m_old - m_new), hence
    #   s_new = c * s_old,   t_new = c * (t_old + (m_old - m_new) * s_old),
    # then the new tile's own terms are added. m starts at -inf with s = t = 0: c = exp(-inf) = 0 kills the
    # empty history, and the shift (m_old - m_new) is taken as 0 there so that (-inf) * 0 never makes a NaN.
    # Padded vocabulary columns count as z = -inf in the max and get e = 0 exactly (a zero logit would add
    # e^0 = 1 to s), so they add nothing to s or t; (z - m) stays finite so (z - m) * e is a clean 0. Every
    # tile holds at least one real column, so m_new is finite after the first tile.
    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_M], dtype=tl.float32)
    t = tl.zeros([BLOCK_M], dtype=tl.float32)
    tile_lo = pid_v * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, tl.cdiv(V, BLOCK_N))
    for tile in range(tile_lo, tile_hi):
        cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < V
        w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_w  # [1, BN]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < H
            hk = tl.load(h_rows + ks[None, :], mask=row_mask[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
            wk = tl.load(w_cols + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # [BK, BN]
            if UPCAST:
                hk = hk.to(tl.float32)
                wk = wk.to(tl.float32)
            acc = tl.dot(hk, wk, acc, input_precision=DOT_PRECISION)
        z = acc * inv_temp  # padded columns hold z = 0 here: they are excluded below, never used
        m_new = tl.maximum(m, tl.max(tl.where(col_ok[None, :], z, float("-inf")), axis=1))
        c = tl.exp(m - m_new)
        shift = tl.where(s > 0.0, m - m_new, 0.0)
        d = z - m_new[:, None]  # finite everywhere
        e = tl.where(col_ok[None, :], tl.exp(d), 0.0)  # padded columns: exactly 0, not e^0
        t = c * (t + shift * s) + tl.sum(d * e, axis=1)
        s = c * s + tl.sum(e, axis=1)
        m = m_new

    split_off = pid_v.to(tl.int64) * n_total
    tl.store(m_ptr + split_off + out_rows, m, mask=row_mask)
    tl.store(s_ptr + split_off + out_rows, s, mask=row_mask)
    tl.store(t_ptr + split_off + out_rows, t, mask=row_mask)


# ----------------------------------------------------------------------------------------------------------
# Backward: recompute the logits tile, fold the per-row coefficients into dz, then both gradient GEMMs.
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _tile_order(pid, N, V, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped ordering of (row block, vocabulary tile) programs: GROUP_M consecutive row blocks sweep the
    # vocabulary together, so a weight tile is reused from L2 by the programs running at the same time.
    n_m = tl.cdiv(N, BLOCK_M)
    n_v = tl.cdiv(V, BLOCK_N)
    per_group = GROUP_M * n_v
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_v = (pid % per_group) // group_rows
    return pid_m, pid_v


@triton.jit
def _dz_tile(
    h_rows, w_cols, y_ptr, lse_ptr, ent_ptr, a_ptr, b_ptr, rows64, row_ok, cols64, col_ok,
    H, vocab_start, inv_temp,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_B: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """fp32 dz / T of one (row block, vocabulary tile), with the logits tile recomputed as in the forward."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + offs_k
        k_ok = ks < H
        hk = tl.load(h_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wk = tl.load(w_cols + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            hk = hk.to(tl.float32)
            wk = wk.to(tl.float32)
        acc = tl.dot(hk, wk, acc, input_precision=DOT_PRECISION)

    # dz_j = a (1[j = y] - p_j) - b p_j (log p_j + H), with log p_j = z_j - lse and p_j = exp(log p_j):
    # d logp_y / dz_j = 1[j = y] - p_j and dH / dz_j = -p_j (log p_j + H). Padded rows load a = b = 0 and
    # padded columns are selected to 0, so neither can leak into dh or dW. A label outside this shard (or
    # ignore_index) matches no real column, and the one-hot is also masked to real columns.
    lse = tl.load(lse_ptr + rows64, mask=row_ok, other=0.0)
    a = tl.load(a_ptr + rows64, mask=row_ok, other=0.0)
    labels = tl.load(y_ptr + rows64, mask=row_ok, other=-1)
    local = labels - vocab_start
    valid = row_ok[:, None] & col_ok[None, :]
    logp = acc * inv_temp - lse[:, None]
    p = tl.where(valid, tl.exp(logp), 0.0)
    onehot = tl.where(valid & (cols64[None, :] == local[:, None]), 1.0, 0.0)
    dz = a[:, None] * (onehot - p)
    if HAS_B:
        ent = tl.load(ent_ptr + rows64, mask=row_ok, other=0.0)
        b = tl.load(b_ptr + rows64, mask=row_ok, other=0.0)
        dz -= b[:, None] * p * tl.where(valid, logp + ent[:, None], 0.0)
    # z = h.W / T, so both gradient GEMMs carry the factor 1 / T: fold it into dz once.
    return dz * inv_temp


@triton.jit
def _grad_kernel(
    h_ptr, w_ptr, y_ptr, lse_ptr, ent_ptr, a_ptr, b_ptr,  # inputs; b_ptr unused when not HAS_B
    dh_ptr, dw_ptr,  # fp32 accumulators [N, H] and [V, H], zero-initialised, updated with atomic adds
    N, V, H, vocab_start, inv_temp, skip_threshold,
    stride_h, stride_w, stride_dh, stride_dw,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_B: tl.constexpr, NEED_DH: tl.constexpr, NEED_DW: tl.constexpr, SKIP: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # "atomic" strategy (CCE-style): one program per (row block, vocabulary tile) recomputes its dz tile and
    # adds dz @ W[tile] into dh and dz^T @ h[rows] into dW with fp32 atomics, BLOCK_K columns at a time.
    pid_m, pid_v = _tile_order(tl.program_id(0), N, V, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    cols = pid_v * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < V
    cols64 = cols.to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    h_rows = h_ptr + rows64[:, None] * stride_h  # [BM, 1]
    w_cols = w_ptr + cols64[None, :] * stride_w  # [1, BN]: W^T tiles [BK, BN] for the logits
    w_rows = w_ptr + cols64[:, None] * stride_w  # [BN, 1]: W tiles [BN, BK] for dh
    dz = _dz_tile(h_rows, w_cols, y_ptr, lse_ptr, ent_ptr, a_ptr, b_ptr, rows64, row_ok, cols64, col_ok,
                  H, vocab_start, inv_temp, BLOCK_M, BLOCK_N, BLOCK_K, HAS_B, UPCAST, DOT_PRECISION)

    # Optional CCE-style skip: a tile whose |dz| is below the threshold everywhere contributes nothing.
    work = True
    if SKIP:
        work = tl.max(tl.max(tl.abs(dz), axis=1), axis=0) >= skip_threshold
    if work:
        if UPCAST:
            dz_op = dz
        else:
            dz_op = dz.to(w_ptr.dtype.element_ty)
        if NEED_DH:
            # dh[rows, k] += dz @ W[cols, k]
            for k0 in range(0, H, BLOCK_K):
                ks = k0 + offs_k
                k_ok = ks < H
                wk = tl.load(w_rows + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
                if UPCAST:
                    wk = wk.to(tl.float32)
                part = tl.dot(dz_op, wk, input_precision=DOT_PRECISION)  # [BM, BK]
                tl.atomic_add(dh_ptr + rows64[:, None] * stride_dh + ks[None, :], part,
                              mask=row_ok[:, None] & k_ok[None, :], sem="relaxed")
        if NEED_DW:
            # dW[cols, k] += dz^T @ h[rows, k]
            dz_t = tl.trans(dz_op)
            for k0 in range(0, H, BLOCK_K):
                ks = k0 + offs_k
                k_ok = ks < H
                hk = tl.load(h_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                if UPCAST:
                    hk = hk.to(tl.float32)
                part = tl.dot(dz_t, hk, input_precision=DOT_PRECISION)  # [BN, BK]
                tl.atomic_add(dw_ptr + cols64[:, None] * stride_dw + ks[None, :], part,
                              mask=col_ok[:, None] & k_ok[None, :], sem="relaxed")


@triton.jit
def _dz_kernel(
    h_ptr, w_ptr, y_ptr, lse_ptr, ent_ptr, a_ptr, b_ptr,  # inputs for one chunk of rows
    dz_ptr,  # output [N_chunk, V] (row stride stride_dz), in dz_ptr's dtype
    N, V, H, vocab_start, inv_temp,
    stride_h, stride_w, stride_dz,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_B: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # "workspace" strategy: the logits GEMM with the dz epilogue, written to a [chunk, V] workspace that two
    # cuBLAS GEMMs then consume (dh = dz @ W, dW += dz^T @ h).
    pid_m, pid_v = _tile_order(tl.program_id(0), N, V, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    cols = pid_v * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < V
    cols64 = cols.to(tl.int64)
    h_rows = h_ptr + rows64[:, None] * stride_h
    w_cols = w_ptr + cols64[None, :] * stride_w
    dz = _dz_tile(h_rows, w_cols, y_ptr, lse_ptr, ent_ptr, a_ptr, b_ptr, rows64, row_ok, cols64, col_ok,
                  H, vocab_start, inv_temp, BLOCK_M, BLOCK_N, BLOCK_K, HAS_B, UPCAST, DOT_PRECISION)
    tl.store(dz_ptr + rows64[:, None] * stride_dz + cols64[None, :], dz.to(dz_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------


def _check_device(t: Tensor, name: str) -> None:
    if t.device.type != "cuda" and not INTERPRET:
        raise ValueError(
            f"{name}: the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before triton is "
            f"imported (got a tensor on {t.device})"
        )


def _check_weight(weight: Tensor, vocab_start: int, temperature: float) -> None:
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D tensor [V_local, H], got {getattr(weight, 'shape', weight)}")
    if weight.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"weight: expected float32, bfloat16 or float16, got {weight.dtype}")
    if weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"weight: V_local and H must be >= 1, got shape {tuple(weight.shape)}")
    if not isinstance(vocab_start, int) or vocab_start < 0:
        raise ValueError(f"vocab_start: expected an int >= 0, got {vocab_start!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    _check_device(weight, "weight")


def _check_rows(hidden: Tensor, labels: Tensor, weight: Tensor, name: str) -> None:
    if not isinstance(hidden, Tensor) or hidden.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"{name}: expected a tensor [N, {weight.shape[1]}] (H of weight), "
                         f"got {tuple(getattr(hidden, 'shape', ()))}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"{name}: dtype {hidden.dtype} differs from weight dtype {weight.dtype}")
    if hidden.device != weight.device:
        raise ValueError(f"{name}: on {hidden.device}, weight on {weight.device}")
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels for {name}: expected int64 [{hidden.shape[0]}], got "
                         f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}")
    if labels.device != weight.device:
        raise ValueError(f"labels for {name}: on {labels.device}, weight on {weight.device}")


def _check_vector(x: Tensor, n: int, name: str, device: torch.device) -> Tensor:
    if not isinstance(x, Tensor) or x.shape != (n,):
        raise ValueError(f"{name}: expected an fp32 tensor [{n}], got {tuple(getattr(x, 'shape', ()))}")
    if x.device != device:
        raise ValueError(f"{name}: on {x.device}, weight on {device}")
    return x.to(torch.float32).contiguous()


def _config(defaults: dict, overrides: dict) -> dict:
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"unknown launch options {sorted(unknown)}; valid: {sorted(defaults)}")
    cfg = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("block_m", "block_n", "block_k"):
        v = cfg[key]
        if v < 16 or v & (v - 1):
            raise ValueError(f"{key}: expected a power of two >= 16 (tl.dot), got {v}")
    return cfg


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products ("ieee"), not TF32, so the fp32 path matches an fp32 reference.
    # bf16/fp16 operands are exact in any precision mode; "ieee" is then the plain tensor-core path.
    return "ieee"


def _device_ctx(t: Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else _NullCtx()


class _NullCtx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def row_stats(
    hiddens: Sequence[Tensor], weight: Tensor, labels: Sequence[Tensor], *, temperature: float,
    vocab_start: int = 0, v_splits: int | None = None, block_m: int | None = None,
    block_n: int | None = None, block_k: int | None = None, num_warps: int | None = None,
    num_stages: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row softmax statistics of z = hidden @ weight.T / temperature over the local vocabulary.

    hiddens: 1 or 2 segments [N_i, H] (student rows, then teacher rows), dtype of ``weight`` [V_local, H]
    (fp32, bf16 or fp16); labels: matching int64 [N_i] global token ids; the local vocabulary is
    [vocab_start, vocab_start + V_local). Returns fp32 ``m, s, t, zy`` of shape [sum N_i], segments
    concatenated in order: m = max_j z_j, s = sum_j exp(z_j - m), t = sum_j (z_j - m) exp(z_j - m), and
    zy = z at the label (an fp32 dot of the hidden row with the label's weight row), 0.0 when the label is
    outside the local range (ignore_index included). One kernel launch covers all segments.

    Launch options (None = default for the device): ``v_splits`` splits the vocabulary across programs
    (partial statistics merged on the device, no host sync; default: enough programs to fill the GPU, 1 in
    the interpreter), ``block_m/block_n/block_k`` (powers of two >= 16), ``num_warps``, ``num_stages``.
    """
    _check_weight(weight, vocab_start, temperature)
    hiddens = list(hiddens)
    labels = list(labels)
    if len(hiddens) not in (1, 2) or len(labels) != len(hiddens):
        raise ValueError(f"hiddens/labels: expected 1 or 2 segments each, got {len(hiddens)} and {len(labels)}")
    for i, (h, y) in enumerate(zip(hiddens, labels)):
        _check_rows(h, y, weight, f"hiddens[{i}]")

    fp32 = weight.dtype == torch.float32
    defaults = _FWD_INTERP if INTERPRET else (_FWD_CUDA_FP32 if fp32 else _FWD_CUDA)
    cfg = _config(defaults, dict(block_m=block_m, block_n=block_n, block_k=block_k,
                                 num_warps=num_warps, num_stages=num_stages))
    weight = weight.contiguous()
    hiddens = [h.contiguous() for h in hiddens]
    labels = [y.contiguous() for y in labels]
    if len(hiddens) == 1:  # the second segment is empty: reuse the first pointers, no row blocks
        hiddens.append(hiddens[0])
        labels.append(labels[0])
        n0, n1 = hiddens[0].shape[0], 0
    else:
        n0, n1 = hiddens[0].shape[0], hiddens[1].shape[0]
    V, H = weight.shape
    n_total = n0 + n1
    dev = weight.device
    if n_total == 0:
        empty = torch.empty(0, dtype=torch.float32, device=dev)
        return empty, empty.clone(), empty.clone(), empty.clone()

    bm, bn = cfg["block_m"], cfg["block_n"]
    row_blocks = triton.cdiv(n0, bm) + triton.cdiv(n1, bm)
    n_tiles = triton.cdiv(V, bn)
    if v_splits is None:
        if dev.type == "cuda":
            sms = torch.cuda.get_device_properties(dev).multi_processor_count
            v_splits = max(1, triton.cdiv(2 * sms, row_blocks))
        else:
            v_splits = 1
    if not isinstance(v_splits, int) or v_splits < 1:
        raise ValueError(f"v_splits: expected an int >= 1, got {v_splits!r}")
    tiles_per_split = triton.cdiv(n_tiles, min(v_splits, n_tiles))
    n_splits = triton.cdiv(n_tiles, tiles_per_split)  # every split holds at least one tile

    m = torch.empty(n_splits, n_total, dtype=torch.float32, device=dev)
    s = torch.empty_like(m)
    t = torch.empty_like(m)
    zy = torch.empty(n_total, dtype=torch.float32, device=dev)
    with _device_ctx(weight):
        _row_stats_kernel[(row_blocks, n_splits)](
            hiddens[0], hiddens[1], labels[0], labels[1], weight, m, s, t, zy,
            n0, n1, V, H, vocab_start, 1.0 / temperature,
            hiddens[0].stride(0), hiddens[1].stride(0), weight.stride(0), tiles_per_split,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["block_k"], UPCAST=INTERPRET,
            DOT_PRECISION=_dot_precision(weight.dtype), num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"],
        )
    if n_splits == 1:
        return m[0], s[0], t[0], zy
    # Merge the splits with the same rule as inside the kernel (every split saw >= 1 real column, so each
    # m_i is finite and m_i - m_max <= 0):
    #   s = sum_i c_i s_i,  t = sum_i c_i (t_i + (m_i - m) s_i),  c_i = exp(m_i - m).
    m_max = m.max(dim=0).values
    c = torch.exp(m - m_max)
    s_all = (c * s).sum(dim=0)
    t_all = (c * (t + (m - m_max) * s)).sum(dim=0)
    return m_max, s_all, t_all, zy


STRATEGIES = ("workspace", "atomic", "two_pass")
_WORKSPACE_BYTES = 256 * 2**20
# The backward used when a caller names none (the public API never does): SDAR_TRITON_BACKWARD, read per call.
_STRATEGY_ENV = "SDAR_TRITON_BACKWARD"


def default_strategy() -> str:
    """``$SDAR_TRITON_BACKWARD`` (one of STRATEGIES) or "workspace"."""
    value = os.environ.get(_STRATEGY_ENV, "workspace")
    if value not in STRATEGIES:
        raise ValueError(f"{_STRATEGY_ENV}: expected one of {STRATEGIES}, got {value!r}")
    return value


def grad(
    hidden: Tensor, weight: Tensor, labels: Tensor, lse: Tensor, entropy: Tensor, grad_logp: Tensor,
    grad_entropy: Tensor | None, *, temperature: float, vocab_start: int = 0, need_hidden_grad: bool = True,
    need_weight_grad: bool = True, strategy: str | None = None, workspace_bytes: int | None = None,
    skip_threshold: float | None = None, block_m: int | None = None, block_n: int | None = None,
    block_k: int | None = None, group_m: int | None = None, num_warps: int | None = None,
    num_stages: int | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Recomputing backward for one segment of rows.

    hidden [N, H] and weight [V_local, H] (same dtype), labels int64 [N], lse and entropy fp32 [N] (global
    log-normaliser and entropy), grad_logp = a and grad_entropy = b fp32 [N] (None: b = 0, the entropy term
    is compiled out). With p_j = exp(z_j - lse) over the local columns j,
    dz_j = a (1[j = label - vocab_start] - p_j) - b p_j ((z_j - lse) + entropy).
    Returns (dh, dW): dh = dz @ weight / T in hidden's dtype (accumulated in fp32), dW = dz.T @ hidden / T
    [V_local, H] in fp32 ("workspace", "atomic") or in weight's dtype ("two_pass"); None for the one not asked
    for.

    ``strategy``:
      * "workspace" (default): chunks of rows; a Triton kernel recomputes the logits and writes dz / T in the
        input dtype to a [rows, V_local] workspace of at most ``workspace_bytes`` (default 256 MiB, at least
        one row block), then two GEMMs (cuBLAS on CUDA) form dh for the chunk and accumulate dW in fp32.
      * "atomic": one fused kernel per (row block, vocabulary tile) adds its dh and dW partials with fp32
        atomics (CCE-style; dh is accumulated in an fp32 [N, H] buffer). ``skip_threshold`` (default None =
        exact) skips the GEMMs of a tile whose |dz| / T is below it everywhere.
      * "two_pass": no [V, H] fp32 accumulator at all. Pass 1 is "workspace" without dW (rows outer: each row
        chunk's dh comes out of one cuBLAS GEMM over the whole vocabulary). Pass 2 walks vocabulary slices
        (all rows x as many columns as the workspace holds): dz for the slice, then dW[slice] = dz.T @ hidden
        in one GEMM with fp32 accumulation, written in weight's dtype. Extra memory is the workspace alone; the
        logits are recomputed twice (8 N H V backward flops instead of 6).
    None: ``$SDAR_TRITON_BACKWARD`` or "workspace" (``default_strategy``).
    Which is faster is a GPU measurement (docs/GPU_NOTES.md). Launch options: ``block_m/block_n/block_k``,
    ``group_m`` (row blocks swept together for L2 reuse), ``num_warps``, ``num_stages``.
    """
    _check_weight(weight, vocab_start, temperature)
    _check_rows(hidden, labels, weight, "hidden")
    n, H = hidden.shape
    V = weight.shape[0]
    dev = weight.device
    lse = _check_vector(lse, n, "lse", dev)
    entropy = _check_vector(entropy, n, "entropy", dev)
    grad_logp = _check_vector(grad_logp, n, "grad_logp", dev)
    has_b = grad_entropy is not None
    if has_b:
        grad_entropy = _check_vector(grad_entropy, n, "grad_entropy", dev)
    if strategy is None:
        strategy = default_strategy()
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if skip_threshold is not None:
        if strategy != "atomic":
            raise ValueError("skip_threshold: only strategy='atomic' can skip vocabulary tiles")
        if not skip_threshold >= 0:
            raise ValueError(f"skip_threshold: expected None or a number >= 0, got {skip_threshold!r}")
    if workspace_bytes is None:
        workspace_bytes = _WORKSPACE_BYTES
    if not isinstance(workspace_bytes, int) or workspace_bytes < 1:
        raise ValueError(f"workspace_bytes: expected an int >= 1, got {workspace_bytes!r}")
    fp32 = weight.dtype == torch.float32
    half = _DZ_CUDA if strategy in ("workspace", "two_pass") else _BWD_CUDA
    defaults = _BWD_INTERP if INTERPRET else (_BWD_CUDA_FP32 if fp32 else half)
    cfg = _config(defaults, dict(block_m=block_m, block_n=block_n, block_k=block_k, group_m=group_m,
                                 num_warps=num_warps, num_stages=num_stages))
    if not need_hidden_grad and not need_weight_grad:
        return None, None

    hidden = hidden.contiguous()
    weight = weight.contiguous()
    labels = labels.contiguous()
    coeffs = (lse, entropy, grad_logp, grad_entropy if has_b else grad_logp)
    with _device_ctx(weight):
        if strategy == "atomic":
            return _grad_atomic(hidden, weight, labels, coeffs, has_b, temperature, vocab_start,
                                need_hidden_grad, need_weight_grad, skip_threshold, cfg)
        if strategy == "two_pass":
            dh = None
            if need_hidden_grad:
                dh, _ = _grad_workspace(hidden, weight, labels, coeffs, has_b, temperature, vocab_start,
                                        True, False, workspace_bytes, cfg)
            dw = _dw_by_vocab_slices(hidden, weight, labels, coeffs, has_b, temperature, vocab_start,
                                     workspace_bytes, cfg) if need_weight_grad else None
            return dh, dw
        return _grad_workspace(hidden, weight, labels, coeffs, has_b, temperature, vocab_start,
                               need_hidden_grad, need_weight_grad, workspace_bytes, cfg)


def _grad_atomic(hidden, weight, labels, coeffs, has_b, temperature, vocab_start, need_dh, need_dw,
                 skip_threshold, cfg):
    (n, H), V, dev = hidden.shape, weight.shape[0], weight.device
    dh = torch.zeros(n, H, dtype=torch.float32, device=dev) if need_dh else None
    dw = torch.zeros(V, H, dtype=torch.float32, device=dev) if need_dw else None
    if n > 0:
        bm, bn = cfg["block_m"], cfg["block_n"]
        dummy = coeffs[0]  # an fp32 pointer for the accumulator that is not asked for (never touched)
        _grad_kernel[(triton.cdiv(n, bm) * triton.cdiv(V, bn),)](
            hidden, weight, labels, *coeffs, dh if dh is not None else dummy, dw if dw is not None else dummy,
            n, V, H, vocab_start, 1.0 / temperature, float(skip_threshold or 0.0),
            hidden.stride(0), weight.stride(0), H, H,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["block_k"], GROUP_M=cfg["group_m"],
            HAS_B=has_b, NEED_DH=need_dh, NEED_DW=need_dw, SKIP=skip_threshold is not None, UPCAST=INTERPRET,
            DOT_PRECISION=_dot_precision(weight.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
    if dh is not None and hidden.dtype != torch.float32:
        dh = dh.to(hidden.dtype)
    return dh, dw


def _grad_workspace(hidden, weight, labels, coeffs, has_b, temperature, vocab_start, need_dh, need_dw,
                    workspace_bytes, cfg):
    (n, H), V, dev = hidden.shape, weight.shape[0], weight.device
    bm = cfg["block_m"]
    dh = torch.empty_like(hidden) if need_dh else None
    dw = torch.zeros(V, H, dtype=torch.float32, device=dev) if need_dw else None
    if n == 0:
        return dh, dw
    # Rows per chunk: as many whole row blocks as the byte budget holds, at least one, at most N.
    # The workspace holds dz in the input dtype (the GEMM operand type). Under the interpreter it is fp32:
    # the interpreter's fp32 -> bf16 conversion truncates instead of rounding to nearest.
    ws_dtype = torch.float32 if INTERPRET else weight.dtype
    chunk = min(n, max(bm, workspace_bytes // (V * ws_dtype.itemsize) // bm * bm))
    ws = torch.empty(chunk, V, dtype=ws_dtype, device=dev)
    native = dev.type == "cuda"
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        dz = ws[: c1 - c0]
        h = hidden[c0:c1]
        _launch_dz(h, weight, labels[c0:c1], [c[c0:c1] for c in coeffs], dz, vocab_start, has_b, temperature, cfg)
        if need_dh:
            if native:  # cuBLAS, fp32 accumulation, written straight into the output rows
                torch.mm(dz, weight, out=dh[c0:c1])
            else:
                dh[c0:c1] = torch.mm(dz.float(), weight.float())
        if need_dw:
            _accumulate_fp32(dw, dz.t(), h, native)
    return dh, dw


def _launch_dz(hidden, weight, labels, coeffs, dz, vocab_start, has_b, temperature, cfg):
    """dz / T for rows ``hidden`` [n, H] and the columns of ``weight`` [v, H] (global ids from vocab_start) into
    ``dz`` [n, v] (row stride free): the one launch of ``_dz_kernel`` both workspace strategies use."""
    (n, H), v = hidden.shape, weight.shape[0]
    _dz_kernel[(triton.cdiv(n, cfg["block_m"]) * triton.cdiv(v, cfg["block_n"]),)](
        hidden, weight, labels, *coeffs, dz, n, v, H, vocab_start, 1.0 / temperature,
        hidden.stride(0), weight.stride(0), dz.stride(0),
        BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"], GROUP_M=cfg["group_m"],
        HAS_B=has_b, UPCAST=INTERPRET, DOT_PRECISION=_dot_precision(weight.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )


def _dw_by_vocab_slices(hidden, weight, labels, coeffs, has_b, temperature, vocab_start, workspace_bytes, cfg):
    """dW in weight's dtype, one vocabulary slice at a time (all rows): no fp32 [V, H] buffer."""
    (n, H), V, dev = hidden.shape, weight.shape[0], weight.device
    bn = cfg["block_n"]
    native = dev.type == "cuda"
    dw = torch.zeros(V, H, dtype=weight.dtype if native else torch.float32, device=dev)
    if n == 0:
        return dw.to(weight.dtype)
    ws_dtype = torch.float32 if INTERPRET else weight.dtype
    width = min(V, max(bn, workspace_bytes // (max(n, 1) * ws_dtype.itemsize) // bn * bn))
    ws = torch.empty(n, width, dtype=ws_dtype, device=dev)
    for v0 in range(0, V, width):
        v1 = min(V, v0 + width)
        dz = ws[:, : v1 - v0]
        _launch_dz(hidden, weight[v0:v1], labels, coeffs, dz, vocab_start + v0, has_b, temperature, cfg)
        if native:  # cuBLAS: fp32 accumulation over all rows, rounded once into the output slice
            torch.mm(dz.t(), hidden, out=dw[v0:v1])
        else:
            dw[v0:v1] = torch.mm(dz.t().float(), hidden.float())
    return dw.to(weight.dtype)


def _accumulate_fp32(out: Tensor, a: Tensor, b: Tensor, native: bool) -> None:
    """out (fp32) += a @ b for bf16/fp16/fp32 a, b, accumulating in fp32.

    On CUDA with half inputs, in order of preference: cuBLAS straight into the fp32 output (addmm with
    out_dtype, no temporary); an fp32-output product then an add (an [M, N] fp32 temporary); fp32 copies of
    the operands (slow fp32 GEMM). The first that works is remembered."""
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        out.addmm_(a, b)
        return
    if native:
        while _MIXED_MODE[0] < 2:
            try:
                if _MIXED_MODE[0] == 0:
                    torch.ops.aten.addmm.dtype_out(out, a, b, torch.float32, out=out)
                else:
                    out.add_(torch.ops.aten.mm.dtype(a, b, torch.float32))
                return
            except (RuntimeError, NotImplementedError, TypeError):  # no such kernel in this torch
                _MIXED_MODE[0] += 1
    out.addmm_(a.float(), b.float())


_MIXED_MODE = [0]  # CUDA half-input fp32 accumulation: 0 addmm out_dtype, 1 mm out_dtype + add, 2 fp32 copies
