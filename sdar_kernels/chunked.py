"""The chunked pure-PyTorch backend: per-row softmax statistics and the recomputing backward.

Same two-function contract as ``sdar_kernels/ops/triton_logprobs.py`` (``row_stats`` and ``grad``),
plus ``fused_objective_chunks``: the forward of a scalar loss whose per-token gradient
coefficients are known during the forward, which forms the gradient chunk by chunk (4 GEMMs in
total instead of 5 for forward + recomputing backward).

Rows are processed in chunks sized by a byte budget so that no [N, V] tensor is ever held: a
chunk of R rows costs about ``R * V_local * 4 * _TEMPS`` bytes of fp32 temporaries.
Logits of a chunk come from one GEMM with fp32 output (fp32 accumulation; see ``_gemm_weight``
for low-precision inputs); the target logit is an fp32 dot product of the hidden row and the label's
weight row; dW is accumulated in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .options import DEFAULT_CHUNK_BYTES
from .stats import combine_stats

_TEMPS = 3  # fp32 [R, V] temporaries alive at once per chunk (logits, exp, low-precision copy/slack)


def chunk_rows(vocab_local: int, chunk_bytes: int, segments: int = 1) -> int:
    """Rows per segment in one chunk so that the chunk's temporaries fit in ``chunk_bytes``."""
    per_row = max(vocab_local, 1) * 4 * _TEMPS
    return max(1, chunk_bytes // (per_row * segments))


def _gemm_weight(weight: Tensor) -> Tensor:
    """The weight operand of the chunk GEMMs. Low-precision logits must come out of the GEMM in fp32
    (rounding them to bf16 would put ±0.06 at |z| ≈ 20 into lse and break its consistency with the
    fp32 target logit). CUDA has a bf16 → fp32-output GEMM; the CPU has none, so there the weight
    is upcast once per call (one extra fp32 copy of W, documented cost of bf16 on CPU)."""
    if weight.dtype in (torch.float32, torch.float64) or weight.is_cuda:
        return weight
    return weight.float()


def _logits_into(out: Tensor, hidden: Tensor, weight: Tensor, inv_temp: float) -> Tensor:
    """out[R, V] (fp32) = hidden @ weight.T * inv_temp with one GEMM whose output is fp32."""
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


def _label_logit(hidden: Tensor, weight: Tensor, local: Tensor, in_range: Tensor, inv_temp: float) -> Tensor:
    """fp32 z at the label: dot(hidden[r], weight[label_r]) / T; 0 where the label is not local."""
    rows = weight.index_select(0, local.clamp(0, weight.shape[0] - 1))
    zy = (hidden.float() * rows.float()).sum(1) * inv_temp
    return torch.where(in_range, zy, torch.zeros_like(zy))


def _local_labels(labels: Tensor, vocab_start: int, vocab_local: int) -> tuple[Tensor, Tensor]:
    local = labels - vocab_start
    in_range = (local >= 0) & (local < vocab_local)
    return local.clamp(0, max(vocab_local - 1, 0)), in_range


def _stats_of(z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shifts z[R, V] in place to z - m and returns (m, s, t, e) with e = exp(z - m)."""
    m = z.amax(1)
    z.sub_(m.unsqueeze(1))
    e = torch.exp(z)
    s = e.sum(1)
    t = torch.einsum("rv,rv->r", z, e)
    return m, s, t, e


def row_stats(hiddens: Sequence[Tensor], weight: Tensor, labels: Sequence[Tensor], *, temperature: float,
              vocab_start: int = 0, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row (m, s, t, zy) over the local vocabulary; see the module contract in DESIGN §2.

    hiddens: 1 or 2 segments [N_i, H] in weight's dtype; labels: int64 [N_i].
    Returns fp32 [sum N_i] tensors, segments concatenated in order. The segments' rows of one chunk
    are written into one buffer and reduced together (one GEMM per segment, equal shapes, so
    identical rows in two segments give bitwise-identical statistics).
    """
    vocab_local = weight.shape[0]
    inv_temp = 1.0 / temperature
    w_gemm = _gemm_weight(weight)
    sizes = [h.shape[0] for h in hiddens]
    total = sum(sizes)
    device = weight.device
    m_out, s_out, t_out, zy_out = (torch.empty(total, device=device, dtype=torch.float32) for _ in range(4))
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    rows = chunk_rows(vocab_local, chunk_bytes, len(hiddens))
    buf = torch.empty(rows * len(hiddens), vocab_local, device=device, dtype=torch.float32)
    for start in range(0, max(sizes, default=0), rows):
        parts, dests = [], []
        filled = 0
        for h, y, off, n in zip(hiddens, labels, offsets, sizes):
            stop = min(start + rows, n)
            if stop <= start:
                continue
            _logits_into(buf[filled:filled + stop - start], h[start:stop], w_gemm, inv_temp)
            parts.append((h[start:stop], y[start:stop]))
            dests.append(slice(off + start, off + stop))
            filled += stop - start
        m, s, t, _ = _stats_of(buf[:filled])
        r0 = 0
        for (h_c, y_c), dest in zip(parts, dests):
            r1 = r0 + h_c.shape[0]
            m_out[dest], s_out[dest], t_out[dest] = m[r0:r1], s[r0:r1], t[r0:r1]
            local, in_range = _local_labels(y_c, vocab_start, vocab_local)
            zy_out[dest] = _label_logit(h_c, weight, local, in_range, inv_temp)
            r0 = r1
    return m_out, s_out, t_out, zy_out


def _dz_from_logits(z: Tensor, local: Tensor, in_range: Tensor, shift: Tensor | None, entropy: Tensor, a: Tensor,
                    b: Tensor | None, inv_temp: float, e: Tensor | None = None,
                    p_scale: Tensor | None = None) -> Tensor:
    """Turns z[R, V] into dz[R, V] / T in place.

    z holds log p - shift_r (shift None: z holds log p exactly). p = e * p_scale when e = exp(z) and
    p_scale = 1 / s are given (no second exp), else exp(z) (then shift must be None).
    dz_j = a (1[j = y] - p_j) - b p_j (log p_j + H): the coefficient a + b (log p + H) is formed in
    place, multiplied by p, negated, and a is added at the label.
    """
    if b is None:
        if e is None:
            z.exp_()
        else:
            z.copy_(e).mul_(p_scale.unsqueeze(1))
        z.mul_((-a * inv_temp).unsqueeze(1))
    else:
        p = torch.exp(z) if e is None else e.mul_(p_scale.unsqueeze(1))
        offset = entropy if shift is None else entropy - shift
        z.mul_(b.unsqueeze(1)).add_((a + b * offset).unsqueeze(1))
        z.mul_(p).mul_(-inv_temp)
    rows = torch.arange(z.shape[0], device=z.device)
    z.index_put_((rows, local), torch.where(in_range, a * inv_temp, torch.zeros_like(a)), accumulate=True)
    return z


def grad(hidden: Tensor, weight: Tensor, labels: Tensor, lse: Tensor, entropy: Tensor, grad_logp: Tensor,
         grad_entropy: Tensor | None, *, temperature: float, vocab_start: int = 0, need_hidden_grad: bool = True,
         need_weight_grad: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[Tensor | None, Tensor | None]:
    """Recomputing backward for one segment: dh (hidden's dtype) and dW (fp32 [V_local, H])."""
    vocab_local, width = weight.shape
    n = hidden.shape[0]
    inv_temp = 1.0 / temperature
    dh = torch.empty_like(hidden) if need_hidden_grad else None
    dw = torch.zeros(vocab_local, width, device=weight.device, dtype=torch.float32) if need_weight_grad else None
    if not (need_hidden_grad or need_weight_grad):
        return dh, dw
    w_gemm = _gemm_weight(weight)
    rows = chunk_rows(vocab_local, chunk_bytes)
    buf = torch.empty(min(rows, max(n, 1)), vocab_local, device=weight.device, dtype=torch.float32)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        h_c = hidden[start:stop]
        z = _logits_into(buf[:stop - start], h_c, w_gemm, inv_temp)
        local, in_range = _local_labels(labels[start:stop], vocab_start, vocab_local)
        b = None if grad_entropy is None else grad_entropy[start:stop]
        z.sub_(lse[start:stop].unsqueeze(1))  # log p
        dz = _dz_from_logits(z, local, in_range, None, entropy[start:stop], grad_logp[start:stop], b, inv_temp)
        _accumulate(dz, h_c, w_gemm, dh, dw, start, stop)
    return dh, dw


def _accumulate(dz: Tensor, h_c: Tensor, w_gemm: Tensor, dh: Tensor | None, dw: Tensor | None,
                start: int, stop: int) -> None:
    """dh[start:stop] = dz @ W (cast to hidden's dtype); dW += dz.T @ h_c in fp32."""
    if dh is not None:
        if w_gemm.dtype == torch.float32 and dh.dtype == torch.float32:
            torch.mm(dz, w_gemm, out=dh[start:stop])
        elif w_gemm.dtype == torch.float32:
            dh[start:stop] = torch.mm(dz, w_gemm)
        else:  # CUDA low precision: dz rounded to the input dtype, as autograd of the naive path does
            dh[start:stop] = torch.mm(dz.to(w_gemm.dtype), w_gemm)
    if dw is not None:
        dw.addmm_(dz.t(), h_c.float())


TokenObjective = Callable[[slice, Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor | None]]


def fused_objective_chunks(student: Tensor, teacher: Tensor | None, weight: Tensor, labels: Tensor, valid: Tensor,
                           coefficients: TokenObjective, *, temperature: float, vocab_start: int = 0,
                           need_hidden_grad: bool = True, need_weight_grad: bool = True,
                           chunk_bytes: int = DEFAULT_CHUNK_BYTES):
    """Forward of a scalar loss Σ_t f_t(logp_t, H_t, teacher_logp_t) with its gradient formed in place.

    valid: bool [N]; invalid rows get logp = entropy = teacher_logp = 0 (and should get a = b = 0).
    ``coefficients(rows, logp, entropy, teacher_logp)`` gets a chunk's fp32 values (rows: the slice
    of token positions) and returns (loss contribution [scalar], a = ∂f/∂logp [R], b = ∂f/∂H [R] or
    None). Student and teacher rows of a chunk go through the statistics together; only student
    rows get dz. Returns (loss, logp, entropy, teacher_logp or None, dh or None, dW or None), with
    dh in hidden's dtype and dW fp32. Non-vocab-parallel only (needs the global lse per chunk).
    """
    vocab_local, width = weight.shape
    n = student.shape[0]
    inv_temp = 1.0 / temperature
    device = weight.device
    dh = torch.empty_like(student) if need_hidden_grad else None
    dw = torch.zeros(vocab_local, width, device=device, dtype=torch.float32) if need_weight_grad else None
    logp_all = torch.zeros(n, device=device, dtype=torch.float32)
    ent_all = torch.zeros(n, device=device, dtype=torch.float32)
    tlogp_all = torch.zeros(n, device=device, dtype=torch.float32) if teacher is not None else None
    loss = torch.zeros((), device=device, dtype=torch.float32)
    w_gemm = _gemm_weight(weight)
    segs = 1 if teacher is None else 2
    rows = chunk_rows(vocab_local, chunk_bytes, segs)
    buf = torch.empty(min(rows, max(n, 1)) * segs, vocab_local, device=device, dtype=torch.float32)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        r = stop - start
        h_c = student[start:stop]
        _logits_into(buf[:r], h_c, w_gemm, inv_temp)
        if teacher is not None:
            _logits_into(buf[r:2 * r], teacher[start:stop], w_gemm, inv_temp)
        z = buf[:r * segs]
        local, in_range = _local_labels(labels[start:stop], vocab_start, vocab_local)
        m, s, t, e = _stats_of(z)
        valid_c = valid[start:stop]
        zy = _label_logit(h_c, weight, local, in_range, inv_temp)
        if teacher is not None:
            zy = torch.cat([zy, _label_logit(teacher[start:stop], weight, local, in_range, inv_temp)])
            valid_c = torch.cat([valid_c, valid_c])
        _, lp, ent = combine_stats(m, s, t, zy, valid_c)
        logp, tlogp = lp[:r], (lp[r:] if teacher is not None else None)
        logp_all[start:stop], ent_all[start:stop] = logp, ent[:r]
        if tlogp is not None:
            tlogp_all[start:stop] = tlogp
        part, a, b = coefficients(slice(start, stop), logp, ent[:r], tlogp)
        loss += part
        if dh is None and dw is None:
            continue
        # z holds z - m, e = exp(z - m): log p = (z - m) - log s and p = e / s (no second exp).
        dz = _dz_from_logits(z[:r], local, in_range, torch.log(s[:r]), ent[:r], a, b, inv_temp, e=e[:r],
                             p_scale=1.0 / s[:r])
        _accumulate(dz, h_c, w_gemm, dh, dw, start, stop)
    return loss, logp_all, ent_all, tlogp_all, dh, dw
