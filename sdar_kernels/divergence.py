"""Full-vocabulary teacher–student divergences, fused over the LM head: ``fused_divergence``.

Per token t the student distribution p_S = softmax(z_S / τ) with z_S = h_S·Wᵀ and the teacher distribution
p_T = softmax(z_T / τ) with z_T = h_T·Wᵀ (the same head W, the teacher context s_t⁺) are compared over the
whole vocabulary (or over the teacher's top-k tokens), without ever holding a [tokens × vocab] tensor
in the ``chunked`` and ``triton`` implementations.

Conventions (all sums over the vocabulary j; log-probs in nats):

* ``kind="reverse_kl"``:  D = KL(p_S ‖ p_T) = Σ_j p_S,j (log p_S,j − log p_T,j)      (mode seeking)
* ``kind="forward_kl"``:  D = KL(p_T ‖ p_S) = Σ_j p_T,j (log p_T,j − log p_S,j)      (mass covering)
* ``kind="jsd"``: the generalised Jensen–Shannon divergence of GKD (Agarwal et al. 2024, eq. 1) exactly
  as TRL's ``GKDTrainer.generalized_jsd_loss`` (and Liger's ``LigerFusedLinearJSDLoss``) compute it:

      M = β·p_T + (1 − β)·p_S,      D = β·KL(p_T ‖ M) + (1 − β)·KL(p_S ‖ M)

  with TRL's end points: β = 0 is the forward KL(p_T ‖ p_S) and β = 1 the reverse KL(p_S ‖ p_T).
  (Those are special cases, as in TRL: the unscaled JSD_β tends to 0 at both ends; it is JSD_β/β that
  tends to the forward KL as β → 0 and JSD_β/(1 − β) to the reverse KL as β → 1.)

Gradients flow to the student side only (``student_hidden`` and ``weight`` through the student logits);
the teacher is detached: ``teacher_hidden`` never receives a gradient, and W receives none through z_T.
The derivations of ∂D/∂z_S are written next to the code that uses them (``divergence_chunked.py``).

How the SDAR loss uses this (DESIGN §1): the full-distribution estimators replace the sampled gap term
by D_t, gated per token exactly like the sampled estimator,

    L = Σ_t mask_t · sg(g_t) · D_t / Σ_t mask_t,

which is ``gated_divergence(student_hidden, teacher_hidden, weight, labels_or_mask, gate, kind=...)``.

Vocab-parallel heads (``process_group=``; layout and conventions in ``distributed.py``): rank r holds
W[vocab_start_r : vocab_start_r + V_r]. Per row, both sides' (max, Σexp) over the local shard merge into
the global log-normalisers (all-reduce MAX + SUM, O(N)); given those, log p_S,j, log p_T,j and the JSD
mixture log M_j are column-local, so each rank's partial row sums of D_t (and of KL(p_S‖M) for the JSD
gradient) are all-reduced (SUM, O(N)). The student-logit gradient needs only those global row values, so
dW is this rank's shard and dh is all-reduced (O(N·H)); no [N, V] tensor is communicated. The chunked
implementation does this per token chunk (3 small all-reduces a chunk), the Triton one per call, the
naive one with differentiable collectives. ``top_k`` is not available with a vocab-parallel head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .distributed import vocab_layout
from .options import IMPLS, REDUCTIONS, check_choice, check_hidden_and_head

DIVERGENCE_KINDS = ("reverse_kl", "forward_kl", "jsd")
#: ``sdar_loss`` estimator name → divergence kind (for the integration in ``interface.py``).
ESTIMATOR_TO_KIND = {"full_reverse_kl": "reverse_kl", "full_forward_kl": "forward_kl", "jsd": "jsd"}
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Default byte budget of one token chunk's temporaries (chunked): both sides' logits of a chunk plus
#: its (n, V) temporaries; 32 MiB keeps the op's extra memory near dW + dh on the CPU benchmark set.
DEFAULT_CHUNK_BYTES = 32 * 2**20


@dataclass(frozen=True)
class DivergenceOptions:
    """Everything a divergence backend and its autograd layer need (frozen; travels through ``apply``).

    kind: "reverse_kl", "forward_kl" or "jsd" (already resolved: jsd with β ∈ {0, 1} becomes a KL).
    beta: the JSD mixture weight of the teacher (β in M = β·p_T + (1 − β)·p_S); unused by the KLs.
    temperature: logits are ``hidden @ weight.T / temperature`` for both sides.
    top_k: restrict both distributions to the teacher's top-k tokens of the row (renormalised), or None.
    impl: the resolved implementation ("naive", "chunked" or "triton"; never "auto").
    mode: "rows" (output the per-row weighted divergences c_t·D_t, any upstream gradient) or
        "sum" (output the scalar Σ_t c_t·D_t; the gradient can be formed during the forward).
    chunk_bytes: byte budget of the fp32 temporaries of one token chunk (chunked implementation).
    process_group: the ``torch.distributed`` group over which ``weight`` is split along the vocabulary
        (None: the head is whole, no communication).
    vocab_size: the global vocabulary size (``weight.shape[0]`` without a group); with a group the
        chunked path sizes its token chunks by vocab_size / world so that every rank walks the same chunks.
    """

    kind: str = "reverse_kl"
    beta: float = 0.5
    temperature: float = 1.0
    top_k: int | None = None
    impl: str = "chunked"
    mode: str = "sum"
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    process_group: object = None
    vocab_size: int = 0


def resolve_kind(kind: str, beta: float) -> str:
    """TRL's convention: JSD with β = 0 is the forward KL, with β = 1 the reverse KL."""
    if kind == "jsd" and beta == 0.0:
        return "forward_kl"
    if kind == "jsd" and beta == 1.0:
        return "reverse_kl"
    return kind


def resolve_impl(impl: str, device: torch.device, top_k: int | None) -> str:
    """``auto`` → triton on CUDA (full vocabulary), chunked elsewhere or with ``top_k``."""
    check_choice("impl", impl, IMPLS)
    if impl == "forward_grad":
        raise ValueError("impl='forward_grad' is not implemented for the full-distribution divergences; "
                         "use 'auto', 'triton', 'chunked' or 'naive'")
    if impl == "auto":
        return "triton" if device.type == "cuda" and top_k is None else "chunked"
    if impl == "triton" and top_k is not None:
        raise NotImplementedError(
            "fused_divergence: top_k is implemented by impl='naive' and impl='chunked' only, not 'triton'")
    return impl


def _check_inputs(student_hidden, teacher_hidden, weight, labels_or_mask, gate=None):
    for name, t in (("student_hidden", student_hidden), ("teacher_hidden", teacher_hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    check_hidden_and_head("student_hidden", student_hidden, weight)
    if teacher_hidden.shape != student_hidden.shape:
        raise ValueError(f"teacher_hidden must have the shape of student_hidden {tuple(student_hidden.shape)}, "
                         f"got {tuple(teacher_hidden.shape)}")
    if teacher_hidden.dtype != weight.dtype:
        raise TypeError(f"teacher_hidden dtype {teacher_hidden.dtype} must match weight dtype {weight.dtype}")
    if not (student_hidden.device == teacher_hidden.device == weight.device):
        raise ValueError("student_hidden, teacher_hidden and weight must be on one device")
    if not isinstance(labels_or_mask, torch.Tensor):
        raise TypeError(f"labels_or_mask must be a torch.Tensor, got {type(labels_or_mask).__name__}")
    if labels_or_mask.shape != student_hidden.shape[:-1]:
        raise ValueError(f"labels_or_mask must have shape {tuple(student_hidden.shape[:-1])} (the hidden shape "
                         f"without H), got {tuple(labels_or_mask.shape)}")
    if not (labels_or_mask.dtype in (torch.int64, torch.int32, torch.bool) or labels_or_mask.is_floating_point()):
        raise TypeError(f"labels_or_mask must be int64 labels or a bool/float mask, got {labels_or_mask.dtype}")
    if gate is not None:
        if not isinstance(gate, torch.Tensor) or not gate.is_floating_point():
            raise TypeError("gate must be a floating-point torch.Tensor")
        if gate.shape != student_hidden.shape[:-1]:
            raise ValueError(f"gate must have shape {tuple(student_hidden.shape[:-1])}, got {tuple(gate.shape)}")


def _check_scalars(kind, beta, temperature, top_k, reduction, ignore_index, chunk_bytes):
    check_choice("kind", kind, DIVERGENCE_KINDS)
    check_choice("reduction", reduction, REDUCTIONS)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must be a number in [0, 1], got {beta!r}")
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")


def _options(student_hidden, weight, *, kind, beta, temperature, top_k, impl, chunk_bytes, process_group,
             vocab_start, vocab_size) -> DivergenceOptions:
    """The resolved options of one call (after the argument checks); the vocabulary layout of the head."""
    _, vocab_size = vocab_layout(weight, process_group, vocab_start, vocab_size)
    if process_group is not None and top_k is not None:
        raise NotImplementedError("top_k is not available with a vocab-parallel head (process_group): the "
                                  "teacher's top-k set would need a global top-k across the shards")
    return DivergenceOptions(kind=resolve_kind(kind, float(beta)), beta=float(beta), temperature=float(temperature),
                             top_k=top_k, impl=resolve_impl(impl, student_hidden.device, top_k),
                             chunk_bytes=chunk_bytes, process_group=process_group, vocab_size=vocab_size)


def _row_mask(labels_or_mask: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """(N,) fp32 row weights m_t: labels → (label != ignore_index); bool → 0/1; float → the values."""
    m = labels_or_mask.reshape(-1)
    if m.dtype in (torch.int64, torch.int32):
        return (m != ignore_index).to(torch.float32)
    return m.detach().to(torch.float32)


def _rows_without_grad(hs, ht, weight, opts: DivergenceOptions) -> torch.Tensor:
    if opts.impl == "chunked":
        from .divergence_chunked import chunked_divergence_pass

        return chunked_divergence_pass(hs, ht, weight, opts)[0]
    from .divergence_triton import triton_divergence_rows

    return triton_divergence_rows(hs.contiguous(), ht.contiguous(), weight.contiguous(), opts)[0]


def _run(student_hidden, teacher_hidden, weight, m, gate, opts: DivergenceOptions, reduction: str):
    """Shared body: per-row coefficients c_t, dispatch to the backend, reduction."""
    lead_shape = student_hidden.shape[:-1]
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    if gate is None:
        c = m  # (N,)
    else:  # m_t·sg(g_t), exactly 0 on excluded rows whatever the gate holds there
        c = torch.where(m != 0, m * gate.detach().reshape(-1).to(torch.float32), torch.zeros_like(m))
    if reduction == "mean":
        denom = m.sum()
        # Σ_t m_t D_t / Σ_t m_t, and exactly 0 (no NaN) when every row is masked; no host sync.
        c = torch.where(denom > 0, c / denom.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(c))
    mode = "rows" if reduction == "none" else "sum"
    opts = replace(opts, mode=mode)
    if opts.impl != "naive" and not (torch.is_grad_enabled() and (hs.requires_grad or weight.requires_grad)):
        # Nothing to differentiate (no_grad / evaluation): the forward pass alone, no gradient work.
        d = _rows_without_grad(hs, ht, weight, opts)  # (N,) fp32
        rows = torch.where(c != 0, d * c, torch.zeros_like(d))
        return rows.reshape(lead_shape) if mode == "rows" else rows.sum()
    if opts.impl == "naive":
        from .divergence_reference import naive_divergence_rows, naive_sharded_divergence_rows

        rows_fn = naive_divergence_rows if opts.process_group is None else naive_sharded_divergence_rows
        d = rows_fn(hs, ht, weight, opts)  # (N,) fp32, autograd through the student
        out = d * c if mode == "rows" else (d * c).sum()
    elif opts.impl == "chunked":
        from .divergence_chunked import ChunkedDivergenceFunction

        out = ChunkedDivergenceFunction.apply(hs, ht, weight, c, opts)
    else:
        from .divergence_triton import TritonDivergenceFunction

        out = TritonDivergenceFunction.apply(hs, ht, weight, c, opts)
    return out.reshape(lead_shape) if mode == "rows" else out


def fused_divergence(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, weight: torch.Tensor,
                     labels_or_mask: torch.Tensor, *, kind: str = "reverse_kl", beta: float = 0.5,
                     temperature: float = 1.0, top_k: int | None = None, reduction: str = "mean",
                     ignore_index: int = -100, impl: str = "auto", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                     process_group=None, vocab_start: int | None = None,
                     vocab_size: int | None = None) -> torch.Tensor:
    """Full-vocabulary divergence D_t between the student's and the teacher's next-token distributions.

    Args:
        student_hidden: (..., H) float32/bfloat16/float16 — final hidden states of the student context s_t.
            Receives a gradient.
        teacher_hidden: (..., H), same shape and dtype — hidden states of the teacher context s_t⁺.
            Detached: never receives a gradient.
        weight: (V, H), same dtype — the LM head shared by both sides (this rank's (V_local, H) shard with
            ``process_group``). Receives a gradient through the student logits only (none when
            ``weight.requires_grad`` is False: frozen head, no dW work).
        labels_or_mask: (...) — int64/int32 labels (rows equal to ``ignore_index`` are excluded; other
            values are not used) or a bool/float mask m_t (0 = excluded; a float mask weights the rows).
        kind: "reverse_kl" = KL(p_S‖p_T), "forward_kl" = KL(p_T‖p_S) or "jsd" = β·KL(p_T‖M) +
            (1−β)·KL(p_S‖M), M = β·p_T + (1−β)·p_S (TRL's GKD convention; β = 0 → forward KL,
            β = 1 → reverse KL).
        beta: JSD mixture weight in [0, 1] (ignored by the KLs).
        temperature: τ > 0; both distributions are softmax(hidden·Wᵀ/τ).
        top_k: None (full vocabulary) or k ≥ 1: per row, both distributions are restricted to the
            teacher's k highest-logit tokens and renormalised over that set (k ≥ V is the full
            vocabulary). The set is chosen without gradient. Not available with impl="triton".
        reduction: "mean" → Σ m_t D_t / Σ m_t (0 when every row is masked), "sum" → Σ m_t D_t,
            "none" → the (...) tensor m_t·D_t.
        ignore_index: the excluded label value (int labels only).
        impl: "auto" (triton on CUDA without top_k, else chunked), "triton", "chunked" or "naive".
        chunk_bytes: byte budget of one token chunk's fp32 temporaries (chunked only).
        process_group: None (``weight`` is the whole head) or the ``torch.distributed`` group over which
            the head is split along the vocabulary (``distributed.py``): ``weight`` is this rank's shard,
            the hidden states and ``labels_or_mask`` are the same on every rank, the output is the global
            divergence on every rank, ``student_hidden.grad`` the full gradient (dh is all-reduced) and
            ``weight.grad`` the local shard's. Every rank must make the same calls with the same options
            (``chunk_bytes`` included: the chunked path all-reduces per token chunk) and back-propagate the
            same loss. Not with ``top_k``.
        vocab_start, vocab_size: the shard's first global id and the global vocabulary size, as in
            ``fused_logprobs`` (default: shards contiguous in rank order, found with one all-gather).

    Returns:
        fp32 scalar (mean/sum) or fp32 (...) tensor (none), differentiable w.r.t. ``student_hidden``
        and ``weight`` with exact per-token upstream gradients.
    """
    _check_inputs(student_hidden, teacher_hidden, weight, labels_or_mask)
    _check_scalars(kind, beta, temperature, top_k, reduction, ignore_index, chunk_bytes)
    opts = _options(student_hidden, weight, kind=kind, beta=beta, temperature=temperature, top_k=top_k, impl=impl,
                    chunk_bytes=chunk_bytes, process_group=process_group, vocab_start=vocab_start,
                    vocab_size=vocab_size)
    return _run(student_hidden, teacher_hidden, weight, _row_mask(labels_or_mask, ignore_index), None, opts,
                reduction)


def gated_divergence(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, weight: torch.Tensor,
                     labels_or_mask: torch.Tensor, gate: torch.Tensor, *, kind: str = "reverse_kl",
                     beta: float = 0.5, temperature: float = 1.0, top_k: int | None = None,
                     reduction: str = "mean", ignore_index: int = -100, impl: str = "auto",
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES, process_group=None, vocab_start: int | None = None,
                     vocab_size: int | None = None) -> torch.Tensor:
    """The SDAR full-distribution estimator: Σ_t m_t · sg(g_t) · D_t / Σ_t m_t.

    Same arguments as :func:`fused_divergence`, plus ``gate`` (...) float — the per-token gate g_t (detached
    here; e.g. σ(β_gate·Δ_t) from the sampled log-probs). The denominator is the mask count Σ m_t, not
    Σ m_t g_t, exactly like the sampled SDAR loss. ``reduction="sum"`` drops the denominator and
    ``"none"`` returns m_t·g_t·D_t. ``beta`` here is the JSD β, not the gate's β. With ``process_group``
    (a vocab-parallel head) ``gate`` must be the same on every rank, like the other inputs.
    """
    _check_inputs(student_hidden, teacher_hidden, weight, labels_or_mask, gate)
    _check_scalars(kind, beta, temperature, top_k, reduction, ignore_index, chunk_bytes)
    opts = _options(student_hidden, weight, kind=kind, beta=beta, temperature=temperature, top_k=top_k, impl=impl,
                    chunk_bytes=chunk_bytes, process_group=process_group, vocab_start=vocab_start,
                    vocab_size=vocab_size)
    return _run(student_hidden, teacher_hidden, weight, _row_mask(labels_or_mask, ignore_index), gate, opts,
                reduction)
