"""impl="forward_grad": a loss's gradient formed during its forward pass, one token chunk at a time.

The recomputing backends (``chunked``, ``triton``) spend 10·N·H·V flops on a loss step: the logits
of the student and teacher rows in the forward (4), then in the backward the student logits again
(2), dh (2) and dW (2). Every objective of ``grpo_sdar_loss``, and the sampled-token estimators of
``sdar_loss``, is a sum of per-token terms f(logp_t, H_t, logp_T,t; row inputs) whose row inputs
(advantages, behaviour/reference log-probs, aggregation weights) are known before the forward. So
the per-token upstream gradients a = ∂L/∂logp and b = ∂L/∂H are known as soon as a chunk's row
statistics are, while its logits are still in memory; dz, dh and the chunk's share of dW follow at
once and the backward only scales them: 8·N·H·V flops, no recompute.

The price is memory held from forward to backward: dh [N, H] in the hidden dtype and an fp32 dW
[V, H] (2.3 GiB at 151,936 × 4096), plus one chunk's [c, V] logits and their temporaries. On CUDA
the two row epilogues (statistics; dz) are ``torch.compile``d, which fuses their passes over the
chunk's logits — eager, those passes cost what the saved GEMM saves (benchmarks/results/gpu_h200.md,
runs 4–6). Elsewhere they run eagerly; on a CPU the GEMMs are the cost, and the quick CPU benchmark
set measured it level with the chunked backend (noisy: beside two training runs on 2 cores).

On an H200 (run 6, bf16, V 151,936, 2 GiB chunks) the published loss takes 74.9 ms at H 4096,
N 8k + 8k (materialised 80.5, triton 98.5) with 6.2 GiB of extra memory (materialised 17.3, triton
2.3), and grpo_sdar_loss 75.6 ms.

Per chunk of c rows (z = logits / temperature, q = softmax(z), y the label):
    logp = z_y − lse,  H = lse − Σ_j q_j z_j
    ∂logp/∂z_j = δ_jy − q_j,  ∂H/∂z_j = −q_j (log q_j + H)
    dz_j = a·(δ_jy − q_j) − b·q_j (log q_j + H)   (/ temperature for the raw logits)
a and b come from ``torch.autograd.grad`` of the caller's per-token objective on the chunk's
[c] vectors (cheap; whatever the objective, the same code the other backends differentiate).
Not traceable by ``torch.compile`` as a whole (the chunk loop calls autograd inside the forward):
compile a training step with impl="chunked" or "triton".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .distributed import all_reduce_stats, all_reduce_sum
from .options import DEFAULT_CHUNK_BYTES, KernelOptions
from .stats import combine_stats

#: Byte budget of one chunk's fp32 logits on CUDA: at most 3533 rows at V = 151,936, balanced (8k rows →
#: 3 × 2731). On an H200 at H 4096, N 8k (run 6): 1 GiB 84.9–87.3 ms / 4.7 GiB extra, 2 GiB 74.6–76.7
#: ms / 6.2 GiB, 4 GiB 78.6 ms / 8.1 GiB (at H 5120, N 16k 4 GiB is faster: 176.3 vs 183.5 ms, +3.1 GiB).
DEFAULT_CUDA_CHUNK_BYTES = 2 * 2**30

#: objective(rows, logp, entropy, teacher_logp) → per-token loss [c] of the rows ``rows`` (a slice);
#: differentiable in ``logp`` and ``entropy`` (fp32 [c]); ``teacher_logp`` is None without a teacher.
Objective = Callable[[slice, Tensor, Tensor, "Tensor | None"], Tensor]


def chunk_rows(n: int, vocab: int, chunk_bytes: int) -> int:
    """Rows of one chunk: the fewest chunks whose fp32 [rows, V] logits fit in ``chunk_bytes``, made equal
    (8192 rows in chunks of at most 3533 → 3 × 2731, not 3533 + 3533 + 1126)."""
    most = max(1, chunk_bytes // (4 * max(vocab, 1)))
    chunks = max(1, -(-n // most))
    return max(1, -(-n // chunks))


def _row_stats(z: Tensor, labels: Tensor, inv_temp: float):
    """Row statistics (m, s, t, zy) of a chunk's logits as the backends define them (``stats.py``),
    fp32 [c]: about the row max m, s = Σ e^{z−m}, t = Σ (z−m) e^{z−m}, zy = z at the label, 0 where
    ``labels`` is -1 (an invalid row, or a label on another rank's vocabulary shard)."""
    z = z.float() * inv_temp
    m = z.max(dim=-1).values
    shifted = z - m[:, None]
    e = torch.exp(shifted)
    zy = z.gather(1, labels.clamp(min=0)[:, None])[:, 0]
    return m, e.sum(-1), (shifted * e).sum(-1), torch.where(labels >= 0, zy, torch.zeros_like(zy))


def _logit_grad(z: Tensor, labels: Tensor, lse: Tensor, entropy: Tensor, a: Tensor, b: Tensor,
                inv_temp: float) -> Tensor:
    """dL/d(raw logits) [c, V] in the logits' dtype from a = ∂L/∂logp, b = ∂L/∂H (fp32 [c]) and the
    rows' global lse and entropy; the δ_jy term only where ``labels`` (local ids) is not -1."""
    log_q = z.float() * inv_temp - lse[:, None]
    q = torch.exp(log_q)
    dz = -q * (a[:, None] + b[:, None] * (log_q + entropy[:, None]))
    dz = dz.scatter_add(1, labels.clamp(min=0)[:, None], torch.where(labels >= 0, a, torch.zeros_like(a))[:, None])
    return (dz * inv_temp).to(z.dtype)


_COMPILED: dict[str, Callable] = {}


def _epilogues(device: torch.device) -> tuple[Callable, Callable]:
    """The row epilogues, torch.compile'd on CUDA (automatic dynamic shapes: a new last-chunk size
    costs one recompile, then a dynamic kernel serves the rest), eager elsewhere."""
    if device.type != "cuda":
        return _row_stats, _logit_grad
    if not _COMPILED:
        _COMPILED["stats"] = torch.compile(_row_stats)
        _COMPILED["grad"] = torch.compile(_logit_grad)
    return _COMPILED["stats"], _COMPILED["grad"]


class ForwardGradFunction(torch.autograd.Function):
    """loss = Σ_rows objective(...) with dh and dW formed in the forward (module docstring).

    Inputs: student [N, H], weight [V_local, H], labels int64 [N] (GLOBAL ids, -1 on invalid rows),
    valid bool [N], teacher [N, H] or None, objective (see ``Objective``), opts (temperature,
    vocab_start, process_group), rows per chunk. Outputs: the fp32 scalar loss (differentiable
    w.r.t. student and weight) and the detached fp32 [N] student logp, student entropy and teacher
    logp (empty without a teacher); invalid rows hold 0.

    With ``opts.process_group`` the head is a vocabulary shard (``distributed.py``): each chunk's
    statistics of the student and teacher rows are all-reduced (O(c)) before the objective, dz covers
    the local columns, dW is the shard's and dh is all-reduced once after the last chunk (O(N·H)).
    Every rank must walk the same chunks: ``rows_per_chunk`` comes from the GLOBAL vocabulary.
    """

    @staticmethod
    def forward(ctx, student, weight, labels, valid, teacher, objective: Objective, opts: KernelOptions,
                rows_per_chunk: int):
        n = student.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        stats_fn, grad_fn = _epilogues(student.device)
        inv_temp = 1.0 / opts.temperature
        local = labels - opts.vocab_start  # this shard's column of each label, -1 where it has none
        local = torch.where(valid & (local >= 0) & (local < weight.shape[0]), local, torch.full_like(local, -1))
        logp = student.new_zeros(n, dtype=torch.float32)
        entropy = torch.zeros_like(logp)
        teacher_logp = torch.zeros_like(logp) if teacher is not None else logp.new_empty(0)
        total = logp.new_zeros(())
        dh = torch.empty_like(student) if need_h else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        dw_part = torch.empty_like(weight) if need_w and weight.dtype != torch.float32 else None
        for start in range(0, n, rows_per_chunk):
            rows = slice(start, min(start + rows_per_chunk, n))
            h, y, ok = student[rows], local[rows], valid[rows]
            z = h @ weight.T  # (c, V_local) in the head's dtype, fp32 accumulation inside the GEMM
            stats = [stats_fn(z, y, inv_temp)]
            if teacher is not None:
                stats.append(stats_fn(teacher[rows] @ weight.T, y, inv_temp))
            m, s, t, zy = (torch.cat(parts) for parts in zip(*stats))  # (c or 2c,) each
            if opts.process_group is not None:
                m, s, t, zy = all_reduce_stats(m, s, t, zy, opts.process_group)
            c = h.shape[0]
            lse, lp, ent = combine_stats(m, s, t, zy, ok.repeat(len(stats)))
            lse, lp, ent, lp_t = lse[:c], lp[:c], ent[:c], (lp[c:] if teacher is not None else None)
            logp[rows], entropy[rows] = lp, ent
            if lp_t is not None:
                teacher_logp[rows] = lp_t
            with torch.enable_grad():
                lp_leaf = lp.detach().requires_grad_(need_h or need_w)
                ent_leaf = ent.detach().requires_grad_(need_h or need_w)
                part = objective(rows, lp_leaf, ent_leaf, lp_t).sum()
                if need_h or need_w:
                    a, b = torch.autograd.grad(part, [lp_leaf, ent_leaf], allow_unused=True)
            total += part.detach().float()
            if not (need_h or need_w):
                continue
            zero = torch.zeros_like(lp)
            a = zero if a is None else torch.where(ok, a.float(), zero)
            b = zero if b is None else torch.where(ok, b.float(), zero)
            dz = grad_fn(z, y, lse, ent, a, b, inv_temp)  # (c, V_local), head dtype
            del z
            if need_h:
                torch.mm(dz, weight, out=dh[rows])
            if need_w:
                if dw_part is None:
                    dw.addmm_(dz.T, h)
                else:
                    dw += torch.mm(dz.T, h, out=dw_part)  # 16-bit GEMM, fp32 accumulation across chunks
        if need_h and opts.process_group is not None:
            dh = all_reduce_sum(dh, opts.process_group)  # each shard's Σ_j dz_j W_j
        ctx.save_for_backward(dh, dw)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(logp, entropy, teacher_logp)
        return total, logp, entropy, teacher_logp

    @staticmethod
    def backward(ctx, grad_loss, *_):
        dh, dw = ctx.saved_tensors
        grad_h = None if dh is None else dh * grad_loss.to(dh.dtype)
        grad_w = None if dw is None else (dw * grad_loss).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None, None, None


def forward_grad_loss(student: Tensor, weight: Tensor, labels: Tensor, valid: Tensor, teacher: Tensor | None,
                      objective: Objective, opts: KernelOptions, chunk_bytes: int | None):
    """(loss, logp, entropy, teacher_logp or None) through ``ForwardGradFunction`` (flattened rows).

    chunk_bytes: budget of one chunk's fp32 [rows, V] logits, V the global vocabulary (the same on every
    rank of a vocab-parallel head); None → ``DEFAULT_CUDA_CHUNK_BYTES`` on CUDA, ``DEFAULT_CHUNK_BYTES``
    elsewhere.
    """
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CUDA_CHUNK_BYTES if student.device.type == "cuda" else DEFAULT_CHUNK_BYTES
    rows = chunk_rows(student.shape[0], opts.vocab_size, chunk_bytes)
    loss, logp, entropy, teacher_logp = ForwardGradFunction.apply(
        student, weight, labels, valid, None if teacher is None else teacher.detach(), objective, opts, rows)
    return loss, logp, entropy, (teacher_logp if teacher is not None else None)
