"""Valid option names and the frozen option dataclass that travels through the autograd layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMPLS = ("auto", "triton", "chunked", "naive", "forward_grad")
GATES = ("gap", "entropy", "soft_or", "none")
#: Sampled-token estimators (per-token functions of the log-probs, ``losses.sdar_token_loss``) and the
#: full-distribution ones (gate × D_t over the whole vocabulary, ``divergence.gated_divergence``).
SAMPLED_ESTIMATORS = ("sdar", "reverse_kl")
FULL_ESTIMATORS = ("full_reverse_kl", "full_forward_kl", "jsd")
ESTIMATORS = SAMPLED_ESTIMATORS + FULL_ESTIMATORS
REDUCTIONS = ("mean", "sum", "none")
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
DISTILL_KINDS = ("sdar", "skill_sd", "none")

#: Default byte budget for the fp32 temporaries of one token chunk of the chunked implementation.
DEFAULT_CHUNK_BYTES = 64 * 2**20


def check_choice(arg: str, value: str, valid: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``valid``; otherwise raise a ValueError naming ``arg``."""
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{arg}={value!r} is not valid; expected one of {', '.join(map(repr, valid))}")
    return value


@dataclass(frozen=True)
class KernelOptions:
    """Options of one fused log-prob call (everything the backend and the autograd layer need).

    temperature: logits are ``hidden @ weight.T / temperature``.
    ignore_index: label value of rows that contribute nothing.
    vocab_start: first vocabulary id held by ``weight`` (0 unless the head is vocab-parallel).
    vocab_size: size of the FULL vocabulary (normalises the entropy gate); ``weight.shape[0]`` when
        the head is not split.
    impl: the resolved implementation ("triton", "chunked", "naive" or "forward_grad"; never "auto").
    chunk_bytes: byte budget of one token chunk (chunked implementation only).
    process_group: the ``torch.distributed`` group over which the head is sharded along the
        vocabulary (None: the head is whole, no communication).
    """

    temperature: float = 1.0
    ignore_index: int = -100
    vocab_start: int = 0
    vocab_size: int = 0
    impl: str = "chunked"
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    process_group: object = None


def check_hidden_and_head(hidden_name: str, hidden: torch.Tensor, weight: torch.Tensor) -> None:
    """Shape and dtype agreement of hidden states (..., H) with the head (V, H); errors name the argument."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be (V, H), got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"{hidden_name} must be (..., H) with H = weight.shape[1] = {weight.shape[1]}, "
                         f"got shape {tuple(hidden.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"{hidden_name} dtype {hidden.dtype} must match weight dtype {weight.dtype}")
