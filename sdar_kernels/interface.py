"""Public functions: fused log-probs, the SDAR loss and the composed GRPO + SDAR objective.

Every function takes ``impl``: "naive" (materialised fp32 logits + autograd, the reference),
"chunked" (pure PyTorch, tiles sized by a byte budget, never holds [N, V]), "triton"
(fused kernels from ``sdar_kernels.ops``; under ``TRITON_INTERPRET=1`` on CPU), "auto"
(triton for CUDA tensors, chunked otherwise) or "forward_grad" (the losses only: the gradient
formed in the forward a token chunk at a time, 8 instead of 10 N·H·V flops for more memory; see
``forward_grad.py``; ``fused_logprobs`` has no loss to differentiate and runs "auto" for it).
Hidden states are (..., H) and labels (...); rows are flattened internally and results come back
in the labels' shape.

Vocab-parallel heads: ``fused_logprobs``, ``sdar_loss`` and ``grpo_sdar_loss`` (every estimator,
the full-distribution ones included) take ``process_group=`` (and optionally
``vocab_start=``/``vocab_size=``) when ``weight`` is this rank's shard of a head split along the
vocabulary; see ``distributed.py`` for the layout, the collectives and the gradient conventions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import losses
from .distributed import naive_sharded_logprobs, vocab_layout
from .divergence import ESTIMATOR_TO_KIND, gated_divergence
from .forward_grad import forward_grad_loss
from .function import LogprobFunction, safe_labels
from .options import (AGG_MODES, check_hidden_and_head, DEFAULT_CHUNK_BYTES, DISTILL_KINDS, ESTIMATORS, FULL_ESTIMATORS, GATES, IMPLS,
                      REDUCTIONS, SAMPLED_ESTIMATORS, KernelOptions, check_choice)
from .reference import naive_logprobs

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


# ---------------------------------------------------------------- input checks and dispatch

def resolve_impl(impl: str, device: torch.device) -> str:
    """"auto" → "triton" on CUDA, "chunked" elsewhere; other valid names pass through."""
    check_choice("impl", impl, IMPLS)
    if impl == "auto":
        return "triton" if device.type == "cuda" else "chunked"
    return impl


def _check_float(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32/bfloat16/float16/float64, got {x.dtype}")


def _check_labels_in_range(labels: Tensor, vocab_size: int, ignore_index: int) -> None:
    """Labels must lie in [0, V) or equal ignore_index: a host check on CPU, a device assert on CUDA."""
    bad = ((labels < 0) | (labels >= vocab_size)) & (labels != ignore_index)
    if labels.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad.any()):
            raise ValueError(f"labels must lie in [0, {vocab_size}) or equal ignore_index={ignore_index}; "
                             f"got {labels[bad][0].item()}")
    else:
        torch._assert_async(~bad.any(), "labels out of range [0, V) and not ignore_index")


def _prepare(hidden: Tensor, weight: Tensor, labels: Tensor, mask: Tensor | None, *, temperature: float,
             ignore_index: int, impl: str, chunk_bytes: int | None, hidden_name: str = "hidden",
             process_group=None, vocab_start: int | None = None, vocab_size: int | None = None):
    """Validates inputs and flattens them: (h [N, H], labels [N] (-1 where invalid), valid [N], weight_mask [N] fp32, opts)."""
    _check_float(hidden_name, hidden)
    _check_float("weight", weight)
    check_hidden_and_head(hidden_name, hidden, weight)
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64:
        raise TypeError(f"labels must be an int64 tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal {hidden_name}.shape[:-1] = "
                         f"{tuple(hidden.shape[:-1])}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if chunk_bytes is not None and (not isinstance(chunk_bytes, int) or chunk_bytes <= 0):
        raise ValueError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != labels.shape:
            raise ValueError(f"mask shape {tuple(getattr(mask, 'shape', ()))} must equal labels shape "
                             f"{tuple(labels.shape)}")
        if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
            raise TypeError(f"mask must be bool or float, got {mask.dtype}")
    resolved = resolve_impl(impl, hidden.device)
    vocab_start, vocab_size = vocab_layout(weight, process_group, vocab_start, vocab_size)
    _check_labels_in_range(labels, vocab_size, ignore_index)  # global ids against the global vocabulary
    flat_labels = labels.reshape(-1)
    token_weight = (flat_labels != ignore_index).float()
    if mask is not None:
        token_weight = token_weight * mask.reshape(-1).float()
    valid = token_weight != 0
    opts = KernelOptions(temperature=float(temperature), ignore_index=ignore_index, vocab_start=vocab_start,
                         vocab_size=vocab_size, impl=resolved,
                         chunk_bytes=DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes,
                         process_group=process_group)
    h = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    return h, safe_labels(flat_labels, valid), valid, token_weight, opts


def _flat_logprobs(student: Tensor, weight: Tensor, labels: Tensor, valid: Tensor, teacher: Tensor | None,
                   opts: KernelOptions) -> tuple[Tensor, Tensor, Tensor | None]:
    """(student logp, student entropy, teacher logp or None), fp32 [N]; only the student's carry gradient."""
    if opts.impl == "naive":
        if opts.process_group is None:
            def naive(h, w):
                return naive_logprobs(h, w, labels, valid, temperature=opts.temperature)
        else:
            def naive(h, w):
                return naive_sharded_logprobs(h, w, labels, valid, temperature=opts.temperature,
                                              vocab_start=opts.vocab_start, process_group=opts.process_group)
        logp, entropy = naive(student, weight)
        teacher_logp = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logp, _ = naive(teacher.detach(), weight.detach())
        return logp, entropy, teacher_logp
    logp, entropy, teacher_logp = LogprobFunction.apply(student, weight, labels, valid, teacher, opts)
    return logp, entropy, (teacher_logp if teacher is not None else None)


# ---------------------------------------------------------------- fused log-probs

def fused_logprobs(hidden: Tensor, weight: Tensor, labels: Tensor, *, temperature: float = 1.0,
                   return_entropy: bool = False, ignore_index: int = -100, impl: str = "auto",
                   chunk_bytes: int | None = None, process_group=None, vocab_start: int | None = None,
                   vocab_size: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities (and entropies) of ``labels`` under softmax(hidden · weightᵀ / temperature).

    Args:
        hidden: (..., H) float32/bf16/fp16 hidden states.
        weight: (V, H) LM-head weight, same dtype as ``hidden``.
        labels: (...) int64 token ids in [0, V); ``ignore_index`` rows give 0 and no gradient.
        temperature: > 0. return_entropy: also return the entropy.
        impl: "auto" | "triton" | "chunked" | "naive" ("forward_grad" runs "auto" here). chunk_bytes:
            byte budget of the fp32 temporaries of one (rows × vocabulary) tile (chunked only; default
            64 MiB).
        process_group: None (``weight`` is the whole head) or the ``torch.distributed`` group over
            which the head is split along the vocabulary: ``weight`` is then this rank's shard
            (V_local, H), ``hidden``/``labels`` are the same on every rank and labels are GLOBAL
            ids. Outputs are the global log-probs/entropies on every rank; ``hidden.grad`` is the
            full gradient (dh is all-reduced in backward) and ``weight.grad`` the local shard's.
            Every rank must make the same calls and back-propagate the same loss.
        vocab_start: global id of the shard's first row. Default: shards contiguous in rank order
            (rank × V_local for equal shards), found with one all-gather of the shard sizes.
        vocab_size: global vocabulary size (labels are checked against it). Default: Σ V_local over
            the group. Passing both skips that all-gather and allows any shard layout.
    Returns:
        (logp, entropy or None): fp32 (...), both differentiable w.r.t. ``hidden`` and ``weight``
        with exact per-token upstream gradients (any combination of the two).
    """
    check_choice("impl", impl, IMPLS)
    impl = "auto" if impl == "forward_grad" else impl  # log-probs alone: nothing to form in the forward
    h, y, valid, _, opts = _prepare(hidden, weight, labels, None, temperature=temperature,
                                    ignore_index=ignore_index, impl=impl, chunk_bytes=chunk_bytes,
                                    process_group=process_group, vocab_start=vocab_start, vocab_size=vocab_size)
    logp, entropy, _ = _flat_logprobs(h, weight, y, valid, None, opts)
    shape = labels.shape
    return logp.reshape(shape), (entropy.reshape(shape) if return_entropy else None)


# ---------------------------------------------------------------- SDAR loss

@dataclass
class SDAROutput:
    """Result of ``sdar_loss``. All tensors fp32 in the labels' shape (``loss`` scalar unless
    reduction="none"). Only ``loss`` and ``student_logp`` carry gradient; excluded tokens hold 0
    in every per-token field."""

    loss: Tensor
    student_logp: Tensor
    teacher_logp: Tensor
    gap: Tensor
    gate: Tensor
    student_entropy: Tensor


def _safe_denominator(total: Tensor) -> Tensor:
    return torch.where(total > 0, total, torch.ones_like(total))


def _check_forward_grad(*, full: bool, reduction: str = "sum") -> None:
    """impl="forward_grad" needs a scalar loss of sampled-token terms."""
    use = "; use impl='triton' or 'chunked'"
    if full:
        raise ValueError(f"impl='forward_grad' takes the sampled-token estimators "
                         f"{', '.join(map(repr, SAMPLED_ESTIMATORS))}, not the full-distribution ones" + use)
    if reduction == "none":
        raise ValueError("impl='forward_grad' needs reduction='mean' or 'sum' (a scalar loss)" + use)


def sdar_loss(student_hidden: Tensor, teacher_hidden: Tensor, weight: Tensor, labels: Tensor, *,
              mask: Tensor | None = None, gate: str = "gap", beta: float = 5.0, estimator: str = "sdar",
              temperature: float = 1.0, ignore_index: int = -100, reduction: str = "mean", impl: str = "auto",
              chunk_bytes: int | None = None, jsd_beta: float = 0.5, process_group=None,
              vocab_start: int | None = None, vocab_size: int | None = None) -> SDAROutput:
    """The gated self-distillation loss of DESIGN §1 with one pass over the vocabulary.

    Args:
        student_hidden: (..., H) hidden states of the student context (gets gradient).
        teacher_hidden: (..., H) hidden states of the teacher context, same shape (no gradient).
        weight: (V, H) LM head shared by both, same dtype. labels: (...) int64.
        mask: optional (...) bool/float; 0 excludes a token, a float acts as a token weight.
        gate: "gap" σ(βΔ) | "entropy" H/log V | "soft_or" 1−(1−ĥ)(1−σ(βΔ)) | "none" 0.5.
        estimator: sampled-token estimators "sdar" ℓ = g·(sg(logp_T) − logp_S) | "reverse_kl"
            ℓ = −g·sg(Δ)·logp_S; or full-distribution ones ℓ = g·D_t with D_t over the whole
            vocabulary (``divergence.gated_divergence``; gradient w.r.t. the student side only):
            "full_reverse_kl" KL(p_S‖p_T) | "full_forward_kl" KL(p_T‖p_S) | "jsd" β·KL(p_T‖M) +
            (1−β)·KL(p_S‖M), M = β·p_T + (1−β)·p_S with β = ``jsd_beta``. The gate g is the same
            detached gate as for the sampled estimators (from the sampled gap / entropy).
        reduction: "mean" (Σ w ℓ / Σ w over valid tokens; 0 when none), "sum", "none" (w·ℓ, (...)).
        impl, temperature, ignore_index, chunk_bytes: as in ``fused_logprobs`` (the full-distribution
            estimators use the divergence module's own default budget when chunk_bytes is None).
        jsd_beta: β of estimator="jsd" in [0, 1] (0 → forward KL, 1 → reverse KL, TRL's convention).
        process_group, vocab_start, vocab_size: vocab-parallel head, as in ``fused_logprobs``; every
            estimator (the full-distribution ones all-reduce O(N) row values per token chunk, and dh, see
            ``divergence.py``; they need the same ``chunk_bytes`` on every rank).
    Returns:
        ``SDAROutput``: loss; student_logp (carries gradient through the same fused backward, so
        a caller may add a policy term on it and run one backward; detached with
        impl="forward_grad", whose gradient is the loss's alone); detached teacher_logp,
        gap Δ = logp_T − logp_S, gate g and student_entropy. impl="forward_grad" takes the sampled
        estimators and reduction "mean" or "sum" (with a process_group: the same chunk_bytes on every
        rank).
    """
    check_choice("gate", gate, GATES)
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("reduction", reduction, REDUCTIONS)
    if not isinstance(teacher_hidden, Tensor) or teacher_hidden.shape != student_hidden.shape:
        raise ValueError(f"teacher_hidden shape {tuple(getattr(teacher_hidden, 'shape', ()))} must equal "
                         f"student_hidden shape {tuple(student_hidden.shape)}")
    h_s, y, valid, w, opts = _prepare(student_hidden, weight, labels, mask, temperature=temperature,
                                      ignore_index=ignore_index, impl=impl, chunk_bytes=chunk_bytes,
                                      hidden_name="student_hidden", process_group=process_group,
                                      vocab_start=vocab_start, vocab_size=vocab_size)
    _check_float("teacher_hidden", teacher_hidden)
    if teacher_hidden.dtype != weight.dtype:
        raise TypeError(f"teacher_hidden dtype {teacher_hidden.dtype} must match weight dtype {weight.dtype}")
    h_t = teacher_hidden.reshape(h_s.shape).contiguous()
    shape = labels.shape
    scale = 1 / _safe_denominator(w.sum()) if reduction == "mean" else 1.0

    def objective(rows, lp, ent, lp_t):  # the sampled estimators' w·ℓ (·1/Σw for "mean") of rows (a slice)
        g_rows, _ = losses.sdar_gate(lp_t - lp.detach(), ent, gate=gate, beta=beta, vocab_size=opts.vocab_size)
        per_row, _ = losses.sdar_token_loss(lp, lp_t, gate=g_rows, estimator=estimator)
        return w[rows] * scale * per_row

    if opts.impl == "forward_grad":
        _check_forward_grad(full=estimator in FULL_ESTIMATORS, reduction=reduction)
        loss, logp, entropy, teacher_logp = forward_grad_loss(h_s, weight, y, valid, h_t, objective, opts,
                                                              chunk_bytes)
    else:
        logp, entropy, teacher_logp = _flat_logprobs(h_s, weight, y, valid, h_t, opts)
    gap = teacher_logp - logp.detach()
    g, _ = losses.sdar_gate(gap, entropy, gate=gate, beta=beta, vocab_size=opts.vocab_size)
    if estimator in FULL_ESTIMATORS:
        loss = _full_estimator_loss(student_hidden, teacher_hidden, weight, w.reshape(shape), g.reshape(shape),
                                    estimator=estimator, jsd_beta=jsd_beta, reduction=reduction,
                                    temperature=temperature, impl=opts.impl, chunk_bytes=chunk_bytes, opts=opts)
    elif opts.impl != "forward_grad":  # (forward_grad returned the loss with its gradient)
        per_token = objective(slice(None), logp, entropy, teacher_logp)
        loss = per_token.reshape(shape) if reduction == "none" else per_token.sum()
    zero = torch.zeros_like(g)
    return SDAROutput(loss=loss, student_logp=logp.reshape(shape), teacher_logp=teacher_logp.detach().reshape(shape),
                      gap=torch.where(valid, gap, zero).reshape(shape),
                      gate=torch.where(valid, g, zero).reshape(shape),
                      student_entropy=entropy.detach().reshape(shape))


def _full_estimator_loss(student_hidden: Tensor, teacher_hidden: Tensor, weight: Tensor, token_weight: Tensor,
                         gate: Tensor, *, estimator: str, jsd_beta: float, reduction: str, temperature: float,
                         impl: str, chunk_bytes: int | None, opts: KernelOptions) -> Tensor:
    """Σ w·sg(g)·D_t (/ Σ w for "mean"; w·g·D per token for "none") through ``gated_divergence``.

    token_weight, gate: fp32 in the labels' shape (w = 0 on excluded rows). ``opts`` carries the
    vocabulary layout (a vocab-parallel head's group and offsets, already resolved: no collective here).
    """
    extra = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    if opts.process_group is not None:
        extra.update(process_group=opts.process_group, vocab_start=opts.vocab_start, vocab_size=opts.vocab_size)
    return gated_divergence(student_hidden, teacher_hidden, weight, token_weight, gate,
                            kind=ESTIMATOR_TO_KIND[estimator], beta=jsd_beta, temperature=temperature,
                            reduction=reduction, impl=impl, **extra)


# ---------------------------------------------------------------- GRPO + SDAR

def _token_tensor(name: str, x: Tensor | None, shape: torch.Size, allow_per_sequence: bool = False) -> Tensor | None:
    """Validates a per-token float input (or per-sequence (...[:-1]) when allowed) and flattens it to [N] fp32."""
    if x is None:
        return None
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.shape != shape:
        if allow_per_sequence and len(shape) >= 1 and x.shape == shape[:-1]:
            x = x.unsqueeze(-1).expand(shape)
        elif allow_per_sequence and x.dim() == 0:
            x = x.expand(shape)
        else:
            seq = f" or per sequence {tuple(shape[:-1])}" if allow_per_sequence else ""
            raise ValueError(f"{name} shape {tuple(x.shape)} must equal labels shape {tuple(shape)}{seq}")
    return x.detach().reshape(-1).float()


def grpo_sdar_loss(student_hidden: Tensor, teacher_hidden: Tensor | None, weight: Tensor, labels: Tensor,
                   advantages: Tensor, old_logp: Tensor | None = None, ref_logp: Tensor | None = None,
                   mask: Tensor | None = None, *, sdar_coef: float = 0.01, clip: float = 0.2,
                   clip_high: float | None = None, agg: str = "token-mean", norm_len: int | None = None,
                   kl_coef: float = 0.0, entropy_coef: float = 0.0, gate: str = "gap", beta: float = 5.0,
                   sdar_estimator: str = "sdar", pg_coef: float = 1.0, distill: str = "sdar",
                   rlsd_coef: float = 0.0, max_log_ratio: float = 10.0, temperature: float = 1.0,
                   ignore_index: int = -100, impl: str = "auto", chunk_bytes: int | None = None,
                   jsd_beta: float = 0.5, process_group=None, vocab_start: int | None = None,
                   vocab_size: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The published objective L = pg_coef·L_GRPO + kl_coef·KL_k3 − entropy_coef·H̄ + sdar_coef·L_distill
    with a single student pass (DESIGN §1).

    Args:
        student_hidden: (..., T, H) student hidden states (gets gradient); the last token
            dimension is one sequence (used by the seq-mean aggregation modes).
        teacher_hidden: same shape, or None for plain GRPO (no distillation term, no RLSD).
        weight: (V, H) LM head; labels: (..., T) int64 sampled tokens (``ignore_index`` = padding).
        advantages: (..., T) per token or (...) per sequence (broadcast over T), float.
        old_logp: (..., T) behaviour log-probs (None = on-policy, ratio ≡ 1 with gradient).
        ref_logp: (..., T) reference log-probs for the k3 KL (needed when kl_coef ≠ 0).
        mask: optional (..., T) bool/float; 0 excludes a token.
        sdar_coef: λ of the distillation term (token-mean over valid tokens whatever ``agg``).
        clip, clip_high: PPO ε (clip_high defaults to clip). agg: "token-mean" |
            "seq-mean-token-mean" | "seq-mean-token-sum" | "seq-mean-token-sum-norm" (divides by
            ``norm_len``, default T) for the PG, KL and entropy terms.
        gate, beta: as in ``sdar_loss``. sdar_estimator, jsd_beta: ``sdar_loss``'s estimator and
            jsd_beta (a full-distribution estimator adds sdar_coef·Σ tok_w·g·D_t through
            ``divergence.gated_divergence``: one more pass over the head). pg_coef: 0 gives OPSD.
        distill: "sdar" | "skill_sd" (ρ·k3, ρ = exp(min(logp − logp_old, max_log_ratio)) detached)
            | "none". rlsd_coef: λ of RLSD advantage reweighting (0 = off; needs the teacher).
        temperature, ignore_index, impl, chunk_bytes, process_group, vocab_start, vocab_size: as in
            ``fused_logprobs`` (a vocab-parallel head works with every ``sdar_estimator``);
            impl="forward_grad" (gradient formed in the forward, ``forward_grad.py``; chunk_bytes is then
            the budget of one chunk's fp32 logits over the global vocabulary, default 2 GiB on CUDA, the
            same on every rank of a process_group) takes the sampled estimators.
    Returns:
        (loss, metrics): loss is a differentiable fp32 scalar. metrics holds detached fp32 scalars:
        pg_loss, kl, entropy (aggregated like the loss), sdar_loss (token mean of the distillation
        term), clip_frac, ratio_mean, logp_mean, teacher_logp_mean, gap_mean, neg_gap_frac, gate_mean,
        gate_pos_gap_mean, gate_neg_gap_mean, rlsd_weight_mean (means over valid tokens; gap ones 0
        without a teacher, gate ones 0 without the SDAR term, the RLSD weight 1 without RLSD), with
        loss = pg_coef·pg_loss + kl_coef·kl − entropy_coef·entropy + sdar_coef·sdar_loss.

    Student and teacher rows go through one ``row_stats`` call; backward recomputes the student
    logits tile by tile (5 GEMMs in all; on CPU tall row blocks over vocabulary tiles beat a
    4-GEMM fused forward over short row chunks, see chunked.py).
    """
    check_choice("agg", agg, AGG_MODES)
    check_choice("gate", gate, GATES)
    check_choice("sdar_estimator", sdar_estimator, ESTIMATORS)
    check_choice("distill", distill, DISTILL_KINDS)
    if teacher_hidden is not None and (not isinstance(teacher_hidden, Tensor)
                                       or teacher_hidden.shape != student_hidden.shape):
        raise ValueError(f"teacher_hidden shape {tuple(getattr(teacher_hidden, 'shape', ()))} must equal "
                         f"student_hidden shape {tuple(student_hidden.shape)}")
    if teacher_hidden is None and rlsd_coef > 0:
        raise ValueError("rlsd_coef > 0 needs teacher_hidden")
    if kl_coef != 0 and ref_logp is None:
        raise ValueError("kl_coef != 0 needs ref_logp")
    if labels.dim() < 1 and agg != "token-mean":
        raise ValueError(f"agg={agg!r} needs labels with a token dimension")
    full = sdar_estimator in FULL_ESTIMATORS and distill == "sdar" and teacher_hidden is not None
    h_s, y, valid, w, opts = _prepare(student_hidden, weight, labels, mask, temperature=temperature,
                                      ignore_index=ignore_index, impl=impl, chunk_bytes=chunk_bytes,
                                      hidden_name="student_hidden", process_group=process_group,
                                      vocab_start=vocab_start, vocab_size=vocab_size)
    h_t = None
    if teacher_hidden is not None:
        _check_float("teacher_hidden", teacher_hidden)
        if teacher_hidden.dtype != weight.dtype:
            raise TypeError(f"teacher_hidden dtype {teacher_hidden.dtype} must match weight dtype {weight.dtype}")
        h_t = teacher_hidden.reshape(h_s.shape).contiguous()
    shape = labels.shape
    zero = torch.zeros_like(w)
    # Excluded tokens get neutral inputs so that 0-weighted terms stay finite.
    adv = torch.where(valid, _token_tensor("advantages", advantages, shape, allow_per_sequence=True), zero)
    old = _token_tensor("old_logp", old_logp, shape)
    ref = _token_tensor("ref_logp", ref_logp, shape)
    old = None if old is None else torch.where(valid, old, zero)
    ref = None if ref is None else torch.where(valid, ref, zero)
    agg_w = losses.agg_weights(w.reshape(shape), agg, norm_len=norm_len).reshape(-1)
    tok_w = losses.agg_weights(w, "token-mean")
    # A full-distribution estimator: the per-token objective keeps the gate (estimator "sdar",
    # coefficient 0) and sdar_coef·Σ tok_w·g·D_t is added from the divergence pass below.
    hyper = dict(pg_coef=pg_coef, clip=clip, clip_high=clip_high, kl_coef=kl_coef, entropy_coef=entropy_coef,
                 distill=distill, sdar_coef=0.0 if full else sdar_coef, gate=gate, beta=beta,
                 estimator="sdar" if full else sdar_estimator, vocab_size=opts.vocab_size, rlsd_coef=rlsd_coef,
                 max_log_ratio=max_log_ratio)

    def objective(rows, lp, ent, lp_t):  # (f, terms) of the rows ``rows`` (a slice of the flattened tokens)
        def part(x):
            return None if x is None else x[rows]
        return losses.grpo_token_objective(
            lp, ent, advantages=adv[rows], agg_weight=agg_w[rows], distill_weight=tok_w[rows], old_logp=part(old),
            ref_logp=part(ref), teacher_logp=lp_t, **hyper)

    if opts.impl == "forward_grad":
        _check_forward_grad(full=full)
        loss, logp, entropy, teacher_logp = forward_grad_loss(
            h_s, weight, y, valid, h_t, lambda *args: objective(*args)[0], opts, chunk_bytes)
        _, terms = objective(slice(None), logp, entropy, teacher_logp)  # the metrics' terms, detached (O(N))
    else:
        logp, entropy, teacher_logp = _flat_logprobs(h_s, weight, y, valid, h_t, opts)
        per_token, terms = objective(slice(None), logp, entropy, teacher_logp)
        loss = per_token.sum()
    if full:
        distill_loss = _full_estimator_loss(student_hidden, teacher_hidden, weight, tok_w.reshape(shape),
                                            terms["gate"].reshape(shape), estimator=sdar_estimator,
                                            jsd_beta=jsd_beta, reduction="sum", temperature=temperature,
                                            impl=opts.impl, chunk_bytes=chunk_bytes, opts=opts)
        loss = loss + sdar_coef * distill_loss
        terms = dict(terms, distill=None, distill_total=distill_loss.detach())
    return loss, _grpo_metrics(terms, logp.detach(), entropy.detach(), teacher_logp, valid, agg_w, tok_w)


def _grpo_metrics(terms: dict, logp: Tensor, entropy: Tensor, teacher_logp: Tensor | None, valid: Tensor,
                  agg_w: Tensor, tok_w: Tensor) -> dict[str, Tensor]:
    gap = terms["gap"]
    mean = losses.masked_mean
    metrics = {
        "pg_loss": (agg_w * terms["pg"]).sum(),
        "kl": (agg_w * terms["kl"]).sum(),
        "entropy": (agg_w * entropy).sum(),
        "sdar_loss": (tok_w * terms["distill"]).sum() if terms["distill"] is not None else terms["distill_total"],
        "clip_frac": mean(terms["clipped"], valid),
        "ratio_mean": mean(terms["ratio"], valid),
        "logp_mean": mean(logp, valid),
        "teacher_logp_mean": mean(teacher_logp if teacher_logp is not None else torch.zeros_like(logp), valid),
        "gap_mean": mean(gap, valid),
        "neg_gap_frac": mean(gap < 0, valid),
        "gate_mean": mean(terms["gate"], valid),
        "gate_pos_gap_mean": mean(terms["gate"], valid & (gap > 0)),
        "gate_neg_gap_mean": mean(terms["gate"], valid & (gap < 0)),
        "advantage_mean": mean(terms["advantages"], valid),
        "rlsd_weight_mean": mean(terms["rlsd_weight"], valid),
    }
    return {k: v.detach() for k, v in metrics.items()}
