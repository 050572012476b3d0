"""Packing turn-samples into padded tensors and reading the hidden states at response positions.

A sample is ``prompt_ids + response_ids``. Sequences are right-padded (positions stay 0..L-1, the
attention mask hides the padding). The hidden state at position ``len(prompt) - 1 + j`` predicts
response token j, so the loss sees (B, R, H) hidden rows aligned with (B, R) labels, where R is the
longest response — for the student and the (longer-prompted) teacher alike. Full logits are never
formed: the LM head is applied inside ``sdar_kernels``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sdar.models import base_model


@dataclass
class Packed:
    input_ids: torch.Tensor  # (B, L) long, right-padded
    attention_mask: torch.Tensor  # (B, L) long
    gather_idx: torch.Tensor  # (B, R) long: position whose hidden state predicts response token j
    labels: torch.Tensor  # (B, R) long, ignore_index on padding
    mask: torch.Tensor  # (B, R) bool, real response tokens


def pack(prompts: list[list[int]], responses: list[list[int]], *, pad_id: int, device: torch.device,
         resp_len: int | None = None, ignore_index: int = -100) -> Packed:
    """Right-pad ``prompt + response`` rows; ``resp_len`` fixes R (default: the longest response)."""
    if len(prompts) != len(responses):
        raise ValueError("prompts, responses: expected equally many rows")
    b = len(prompts)
    r = resp_len or max((len(x) for x in responses), default=1)
    r = max(r, 1)
    seq_len = max(len(p) + len(x) for p, x in zip(prompts, responses))
    ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    att = torch.zeros((b, seq_len), dtype=torch.long)
    gather = torch.zeros((b, r), dtype=torch.long)
    labels = torch.full((b, r), ignore_index, dtype=torch.long)
    for i, (p, x) in enumerate(zip(prompts, responses)):
        if not p:
            raise ValueError(f"prompts[{i}]: empty prompt")
        x = x[:r]
        row = p + x
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        att[i, : len(row)] = 1
        gather[i, : len(x)] = torch.arange(len(p) - 1, len(p) - 1 + len(x))
        labels[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    labels_mask = labels != ignore_index
    return Packed(ids.to(device), att.to(device), gather.to(device), labels.to(device), labels_mask.to(device))


def response_hidden(model, packed: Packed) -> torch.Tensor:
    """Last hidden states at the response-predicting positions: (B, R, H) (grad if enabled)."""
    out = base_model(model)(input_ids=packed.input_ids, attention_mask=packed.attention_mask, use_cache=False)
    hidden = out.last_hidden_state  # (B, L, H)
    idx = packed.gather_idx[..., None].expand(-1, -1, hidden.shape[-1])  # (B, R, H)
    return hidden.gather(1, idx)  # (B, R, H)


def micro_batches(lengths: list[int], *, max_tokens: int, order: list[int] | None = None) -> list[list[int]]:
    """Split sample indices into micro-batches whose padded size (rows × longest) ≤ ``max_tokens``
    (a single over-long sample forms its own batch). Indices are taken in ``order`` (default: by
    length, so padding stays small)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if order is None else order
    batches, cur, longest = [], [], 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if cur and new_longest * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, new_longest = [], lengths[i]
        cur.append(i)
        longest = new_longest
    if cur:
        batches.append(cur)
    return batches


def pad_rows(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """Stack (R_i, ...) tensors into (B, length, ...) with zeros after each row."""
    out = rows[0].new_zeros((len(rows), length, *rows[0].shape[1:]))
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


def pad_token_id(model) -> int:
    """The id ``pack`` pads with: the model config's pad token, else 0 (padding is masked either way)."""
    pad = getattr(model.config, "pad_token_id", None)
    return pad if isinstance(pad, int) else 0


__all__ = ["Packed", "micro_batches", "pack", "pad_rows", "pad_token_id", "response_hidden"]
