"""The naive implementation: materialise fp32 logits, log_softmax, autograd. The reference path.

Holds [N, V] fp32 logits (and autograd's softmax temporaries); use it for checking and for small
vocabularies, never for a real LM head.
"""

from __future__ import annotations

import torch
from torch import Tensor


def naive_logprobs(hidden: Tensor, weight: Tensor, labels: Tensor, valid: Tensor, *, temperature: float,
                   vocab_start: int = 0) -> tuple[Tensor, Tensor]:
    """fp32 (logp, entropy) [N] of flattened rows, differentiable through autograd.

    hidden [N, H] and weight [V, H] in one dtype; the logits GEMM runs in that dtype and its
    result is converted to fp32 before the softmax. labels int64 [N]; valid bool [N] (invalid
    rows get logp = entropy = 0 and no gradient). ``vocab_start`` must be 0 (no vocabulary split).
    """
    if vocab_start != 0:
        raise ValueError("the naive implementation does not split the vocabulary (vocab_start must be 0)")
    logits = (hidden @ weight.t()).float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    index = torch.where(valid, labels, torch.zeros_like(labels)).clamp(0, weight.shape[0] - 1)
    logp = log_probs.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    zero = torch.zeros_like(logp)
    return torch.where(valid, logp, zero), torch.where(valid, entropy, zero)

