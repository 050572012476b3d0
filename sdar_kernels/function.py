"""Autograd glue shared by the chunked and Triton backends.

A backend is a module with ``row_stats`` and ``grad`` (see ``chunked.py``). ``LogprobFunction``
runs student (and optionally teacher) rows through one ``row_stats`` call, combines the
statistics into log-probs and entropies, and recomputes the logits in backward through ``grad``
(student rows only; teacher outputs are non-differentiable).

With ``opts.process_group`` set the head is a vocabulary shard (``distributed.py``): the shard's
statistics are all-reduced into global ones before ``combine_stats``, and the backward all-reduces
the partial dh (dW stays the local shard's gradient).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import compile as ops
from .distributed import all_reduce_stats, all_reduce_sum
from .options import KernelOptions
from .stats import combine_stats


def safe_labels(labels: Tensor, valid: Tensor) -> Tensor:
    """Labels with invalid rows set to -1: never a vocabulary row, so never indexes memory."""
    return torch.where(valid, labels, torch.full_like(labels, -1))


class LogprobFunction(torch.autograd.Function):
    """(student_logp, student_entropy, teacher_logp) of flattened rows with a recomputing backward.

    Inputs: student [N, H], weight [V_local, H], labels int64 [N] (-1 on invalid rows),
    valid bool [N], teacher [N, H] or None, opts. Outputs are fp32 [N]; teacher_logp is an empty
    tensor when there is no teacher and is never differentiable.
    """

    @staticmethod
    def forward(ctx, student, weight, labels, valid, teacher, opts: KernelOptions):
        n = student.shape[0]
        hiddens = [student] if teacher is None else [student, teacher.detach()]
        m, s, t, zy = ops.row_stats(hiddens, weight, [labels] * len(hiddens), opts.impl, opts.temperature,
                                    opts.vocab_start, opts.chunk_bytes)
        if opts.process_group is not None:
            m, s, t, zy = all_reduce_stats(m, s, t, zy, opts.process_group)
        both_valid = valid if teacher is None else torch.cat([valid, valid])
        lse, logp, entropy = combine_stats(m, s, t, zy, both_valid)
        # Separate copies (O(N)), so that no output is a view of another.
        teacher_logp = logp[n:].clone() if teacher is not None else logp.new_empty(0)
        lse, logp, entropy = lse[:n].clone(), logp[:n].clone(), entropy[:n].clone()
        ctx.save_for_backward(student, weight, labels, valid, lse, entropy)
        ctx.opts = opts
        ctx.mark_non_differentiable(teacher_logp)
        ctx.set_materialize_grads(False)
        return logp, entropy, teacher_logp

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy, _grad_teacher):
        student, weight, labels, valid, lse, entropy = ctx.saved_tensors
        opts = ctx.opts
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (grad_logp is None and grad_entropy is None) or not (need_h or need_w):
            return None, None, None, None, None, None
        zero = torch.zeros_like(lse)
        a = zero if grad_logp is None else torch.where(valid, grad_logp.float(), zero)
        b = None if grad_entropy is None else torch.where(valid, grad_entropy.float(), zero)
        dh, dw = ops.grad(student, weight, labels, lse, entropy, a, b, opts.impl, opts.temperature,
                          opts.vocab_start, opts.chunk_bytes, need_h, need_w)
        if need_h and opts.process_group is not None:
            dh = all_reduce_sum(dh, opts.process_group)  # each shard's Σ_j dz_j W_j; O(N·H)
        return (dh if need_h else None), (dw.to(weight.dtype) if need_w else None), None, None, None, None
