"""The chunked pure-PyTorch backend: per-row softmax statistics and the recomputing backward.

Same two-function contract as ``sdar_kernels/ops/triton_logprobs.py`` (``row_stats``, ``grad``).

Work is split into tiles of (row block × vocabulary tile) sized by a byte budget (``chunk_bytes``):
a tile costs about ``rows * vocab_tile * 4 * _TEMPS`` bytes of fp32 temporaries, so no [N, V]
tensor is ever held. The row block is as tall as the budget allows (all rows when they fit with a
vocabulary tile of at least ``_MIN_TILE`` columns) and the vocabulary is walked in tiles with an
online max/rescale merge. Tall row blocks matter on CPUs: every GEMM call re-packs the weight
panels it touches, so the head is packed once per row block — short row blocks with the whole
vocabulary (one GEMM per chunk of a few hundred rows) were ~1.8x slower than materialised
logits on our 2-core machine, tall blocks with vocabulary tiles are not.

Logits of a tile come from one GEMM with fp32 output (fp32 accumulation; see ``_gemm_weight`` for
low-precision inputs); the target logit is an fp32 dot product of the hidden row and the label's
weight row; dh is accumulated in fp32 over vocabulary tiles and dW in fp32 over row blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .options import DEFAULT_CHUNK_BYTES
from .stats import merge_pair

_TEMPS = 3        # fp32 [rows, tile] temporaries alive at once (logits, exp/probabilities, slack)
_MIN_TILE = 4096  # narrowest vocabulary tile before the row block is shortened (GEMM efficiency)


def tile_shape(rows: int, vocab: int, chunk_bytes: int) -> tuple[int, int]:
    """(row block, vocabulary tile) whose fp32 temporaries fit in ``chunk_bytes``."""
    max_elems = max(1, chunk_bytes // (4 * _TEMPS))
    tile = min(vocab, max(max_elems // max(rows, 1), min(vocab, _MIN_TILE)))
    return max(1, min(rows, max_elems // tile)), tile


def _gemm_weight(weight: Tensor) -> Tensor:
    """The weight operand of the tile GEMMs. Low-precision logits must come out of the GEMM in fp32
    (rounding them to bf16 would put ±0.06 at |z| ≈ 20 into lse and break its consistency with the
    fp32 target logit). CUDA has a bf16 → fp32-output GEMM; the CPU has none, so there the weight
    is upcast once per call (one extra fp32 copy of W: the documented cost of bf16 on CPU)."""
    if weight.dtype in (torch.float32, torch.float64) or weight.is_cuda:
        return weight
    return weight.float()


def _logits_into(out: Tensor, hidden: Tensor, weight: Tensor, inv_temp: float) -> Tensor:
    """out[R, v] (fp32) = hidden @ weight.T * inv_temp with one GEMM whose output is fp32."""
    if hidden.dtype != weight.dtype:  # CPU low precision: weight already upcast by _gemm_weight
        hidden = hidden.float()
    if weight.dtype == torch.float32:
        torch.mm(hidden, weight.t(), out=out)
    elif weight.dtype == torch.float64:
        out.copy_(torch.mm(hidden, weight.t()))
    else:
        out.copy_(torch.mm(hidden, weight.t(), out_dtype=torch.float32))
    if inv_temp != 1.0:
        out.mul_(inv_temp)
    return out


def _label_logit(hidden: Tensor, weight: Tensor, labels: Tensor, vocab_start: int, inv_temp: float) -> Tensor:
    """fp32 z at the label: dot(hidden[r], weight[label_r - vocab_start]) / T; 0 off the local range."""
    local, in_range = _local_labels(labels, vocab_start, weight.shape[0])
    rows = weight.index_select(0, local)
    zy = (hidden.float() * rows.float()).sum(1) * inv_temp
    return torch.where(in_range, zy, torch.zeros_like(zy))


def _local_labels(labels: Tensor, offset: int, width: int) -> tuple[Tensor, Tensor]:
    """Labels shifted into a [0, width) window (clamped, so they always index memory) and the in-window mask."""
    local = labels - offset
    in_range = (local >= 0) & (local < width)
    return local.clamp(0, max(width - 1, 0)), in_range


def _tile_stats(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(m, s, t) of a logits tile z[R, v] about its own row max (z is shifted in place)."""
    m = z.amax(1)
    z.sub_(m.unsqueeze(1))
    e = torch.exp(z)
    return m, e.sum(1), torch.einsum("rv,rv->r", z, e)


def row_stats(hiddens: Sequence[Tensor], weight: Tensor, labels: Sequence[Tensor], *, temperature: float,
              vocab_start: int = 0, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row (m, s, t, zy) over the local vocabulary (the backend contract, DESIGN §2).

    hiddens: 1 or 2 segments [N_i, H] in weight's dtype; labels: int64 [N_i] (any value; only
    [vocab_start, vocab_start + V_local) is read). Returns fp32 [Σ N_i], segments in order.
    The segments' rows of a row block share each vocabulary tile (one GEMM per segment into one
    buffer, equal shapes, so identical rows in two segments give bitwise-identical statistics).
    """
    vocab = weight.shape[0]
    inv_temp = 1.0 / temperature
    w_gemm = _gemm_weight(weight)
    sizes = [h.shape[0] for h in hiddens]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    device = weight.device
    m_out, s_out, t_out, zy_out = (torch.empty(sum(sizes), device=device, dtype=torch.float32) for _ in range(4))
    block, tile = tile_shape(len(sizes) * max(sizes, default=0), vocab, chunk_bytes)
    per_segment = max(1, block // len(sizes))
    buf = torch.empty(per_segment * len(sizes) * tile, device=device, dtype=torch.float32)
    for start in range(0, max(sizes, default=0), per_segment):
        parts = [(h[start:min(start + per_segment, n)], y[start:min(start + per_segment, n)], off + start)
                 for h, y, off, n in zip(hiddens, labels, offsets, sizes) if start < n]
        rows = sum(p[0].shape[0] for p in parts)
        stats = None
        for v0 in range(0, vocab, tile):
            v1 = min(v0 + tile, vocab)
            z = buf[:rows * (v1 - v0)].view(rows, v1 - v0)
            r0 = 0
            for h_part, _, _ in parts:
                _logits_into(z[r0:r0 + h_part.shape[0]], h_part, w_gemm[v0:v1], inv_temp)
                r0 += h_part.shape[0]
            tile_stats = _tile_stats(z)
            stats = tile_stats if stats is None else merge_pair(stats, tile_stats)
        r0 = 0
        for h_part, y_part, dest in parts:
            r1 = r0 + h_part.shape[0]
            out = slice(dest, dest + h_part.shape[0])
            m_out[out], s_out[out], t_out[out] = stats[0][r0:r1], stats[1][r0:r1], stats[2][r0:r1]
            zy_out[out] = _label_logit(h_part, weight, y_part, vocab_start, inv_temp)
            r0 = r1
    return m_out, s_out, t_out, zy_out


def _dz_from_log_p(z: Tensor, local: Tensor, in_range: Tensor, entropy: Tensor, a: Tensor, b: Tensor | None,
                   inv_temp: float) -> Tensor:
    """Turns z[R, v] = log p (one vocabulary tile) into dz / T in place.

    dz_j = a (1[j = y] - p_j) - b p_j (log p_j + H): the coefficient a + b (log p + H) is formed in
    place, multiplied by p, negated, and a is added at the label when it lies in this tile.
    """
    if b is None:
        z.exp_().mul_((-a * inv_temp).unsqueeze(1))
    else:
        p = torch.exp(z)
        z.mul_(b.unsqueeze(1)).add_((a + b * entropy).unsqueeze(1))
        z.mul_(p).mul_(-inv_temp)
    rows = torch.arange(z.shape[0], device=z.device)
    z.index_put_((rows, local), torch.where(in_range, a * inv_temp, torch.zeros_like(a)), accumulate=True)
    return z


def grad(hidden: Tensor, weight: Tensor, labels: Tensor, lse: Tensor, entropy: Tensor, grad_logp: Tensor,
         grad_entropy: Tensor | None, *, temperature: float, vocab_start: int = 0, need_hidden_grad: bool = True,
         need_weight_grad: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[Tensor | None, Tensor | None]:
    """Recomputing backward for one segment: dh (hidden's dtype) and dW (fp32 [V_local, H])."""
    vocab, width = weight.shape
    n = hidden.shape[0]
    inv_temp = 1.0 / temperature
    dh = torch.empty_like(hidden) if need_hidden_grad else None
    dw = torch.zeros(vocab, width, device=weight.device, dtype=torch.float32) if need_weight_grad else None
    if not (need_hidden_grad or need_weight_grad) or n == 0:
        return dh, dw
    w_gemm = _gemm_weight(weight)
    block, tile = tile_shape(n, vocab, chunk_bytes)
    buf = torch.empty(min(block, n) * tile, device=weight.device, dtype=torch.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        h_c, rows = hidden[start:stop], stop - start
        h32 = h_c.float() if need_weight_grad else None
        acc = torch.zeros(rows, width, device=weight.device, dtype=torch.float32) if need_hidden_grad else None
        a, ent, lse_c = grad_logp[start:stop], entropy[start:stop], lse[start:stop]
        b = None if grad_entropy is None else grad_entropy[start:stop]
        for v0 in range(0, vocab, tile):
            v1 = min(v0 + tile, vocab)
            w_t = w_gemm[v0:v1]
            z = _logits_into(buf[:rows * (v1 - v0)].view(rows, v1 - v0), h_c, w_t, inv_temp)
            z.sub_(lse_c.unsqueeze(1))  # log p
            local, in_range = _local_labels(labels[start:stop], vocab_start + v0, v1 - v0)
            dz = _dz_from_log_p(z, local, in_range, ent, a, b, inv_temp)
            if acc is not None:
                if w_t.dtype == torch.float32:
                    acc.addmm_(dz, w_t)
                else:  # CUDA low precision (dz rounded to the input dtype, as the naive path's autograd does) or fp64
                    acc.add_(torch.mm(dz.to(w_t.dtype), w_t))
            if dw is not None:
                dw[v0:v1].addmm_(dz.t(), h32)
        if dh is not None:
            dh[start:stop] = acc
    return dh, dw
