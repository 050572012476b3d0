"""Backend lookup and the backend calls registered as ``torch.library`` custom ops.

``LogprobFunction`` calls the backends only through ``row_stats`` and ``grad`` below, so a
``torch.compile``d step sees two opaque ops with fake (meta) implementations instead of tracing
the tile loops or a Triton launcher: no graph break (tested with ``fullgraph=True`` and the
``aot_eager`` backend, for fused_logprobs, sdar_loss and grpo_sdar_loss).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor

_TRITON_MODULE = "sdar_kernels.ops.triton_logprobs"


def backend_for(impl: str) -> ModuleType:
    """The backend module of a resolved impl ("chunked" or "triton"; Triton imported lazily)."""
    if impl == "chunked":
        from . import chunked
        return chunked
    if impl == "triton":
        try:
            return importlib.import_module(_TRITON_MODULE)
        except ImportError as err:
            raise ImportError(
                f"impl='triton' needs the triton package and {_TRITON_MODULE} ({err}); "
                "use impl='chunked' or impl='naive' instead") from err
    raise ValueError(f"no backend module for impl={impl!r}")


def _extra(impl: str, chunk_bytes: int) -> dict:
    return {"chunk_bytes": chunk_bytes} if impl == "chunked" else {}


@torch.library.custom_op("sdar_kernels::row_stats", mutates_args=())
def row_stats(hiddens: list[Tensor], weight: Tensor, labels: list[Tensor], impl: str, temperature: float,
              vocab_start: int, chunk_bytes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backend ``row_stats`` of ``impl`` as one op: fp32 (m, s, t, zy) of shape [Σ N_i]."""
    return tuple(backend_for(impl).row_stats(hiddens, weight, labels, temperature=temperature,
                                             vocab_start=vocab_start, **_extra(impl, chunk_bytes)))


@row_stats.register_fake
def _row_stats_fake(hiddens, weight, labels, impl, temperature, vocab_start, chunk_bytes):
    n = sum(h.shape[0] for h in hiddens)
    return tuple(weight.new_empty(n, dtype=torch.float32) for _ in range(4))


@torch.library.custom_op("sdar_kernels::logprob_grad", mutates_args=())
def grad(hidden: Tensor, weight: Tensor, labels: Tensor, lse: Tensor, entropy: Tensor, grad_logp: Tensor,
         grad_entropy: Tensor | None, impl: str, temperature: float, vocab_start: int, chunk_bytes: int,
         need_hidden_grad: bool, need_weight_grad: bool) -> tuple[Tensor, Tensor]:
    """Backend ``grad`` of ``impl`` as one op; a gradient not asked for comes back as an empty tensor."""
    dh, dw = backend_for(impl).grad(hidden, weight, labels, lse, entropy, grad_logp, grad_entropy,
                                    temperature=temperature, vocab_start=vocab_start,
                                    need_hidden_grad=need_hidden_grad, need_weight_grad=need_weight_grad,
                                    **_extra(impl, chunk_bytes))
    # dW leaves in the head's dtype (the autograd layer would cast it anyway; "two_pass" already writes it so)
    return (hidden.new_empty(0) if dh is None else dh,
            weight.new_empty(0) if dw is None else dw.to(weight.dtype))


@grad.register_fake
def _grad_fake(hidden, weight, labels, lse, entropy, grad_logp, grad_entropy, impl, temperature, vocab_start,
               chunk_bytes, need_hidden_grad, need_weight_grad):
    dh = torch.empty_like(hidden) if need_hidden_grad else hidden.new_empty(0)
    dw = weight.new_empty(weight.shape if need_weight_grad else (0,))
    return dh, dw
