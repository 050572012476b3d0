"""Row statistics → log-probs and entropies (shared by every backend and the autograd layer).

A backend returns per-row (m, s, t, zy) over its vocabulary shard: m = max z, s = Σ e^{z−m},
t = Σ (z−m) e^{z−m}, zy = z at the label (0 off-shard). ``merge_stats`` merges shards (what a
vocab-parallel run does with all-reduces) and ``combine_stats`` turns global statistics into
lse, logp and entropy.
"""

from __future__ import annotations

import torch
from torch import Tensor


def merge_pair(x: tuple[Tensor, Tensor, Tensor], y: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Merges (m, s, t) of two disjoint vocabulary parts into those of their union.

    With M = max(m_x, m_y) and c = exp(m - M): s = c_x s_x + c_y s_y and, since each t is taken
    about its own m, t = Σ c (t + (m - M) s).
    """
    m = torch.maximum(x[0], y[0])
    s_x, t_x = shift_stats(x[0], x[1], x[2], m)
    s_y, t_y = shift_stats(y[0], y[1], y[2], m)
    return m, s_x + s_y, t_x + t_y


def shift_stats(m: Tensor, s: Tensor, t: Tensor, m_new: Tensor) -> tuple[Tensor, Tensor]:
    """(s, t) of one vocabulary part re-expressed about a larger max ``m_new`` (≥ m).

    With c = e^{m − m_new}: Σ e^{z − m_new} = c·s and Σ (z − m_new) e^{z − m_new} = c·(t + (m − m_new)·s).
    After this, the statistics of disjoint parts simply add (what the vocab-parallel all-reduce sums).
    """
    c = torch.exp(m - m_new)
    return c * s, c * (t + (m - m_new) * s)


def merge_stats(parts: list[tuple[Tensor, Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Merges per-vocabulary-shard (m, s, t, zy) into the statistics of the whole vocabulary.

    (m, s, t) merge pairwise (``merge_pair``); zy is held by exactly one shard and 0 elsewhere, so it
    sums. This is what a vocab-parallel run computes with all-reduces before ``combine_stats``.
    """
    m, s, t = parts[0][:3]
    zy = parts[0][3]
    for part in parts[1:]:
        m, s, t = merge_pair((m, s, t), part[:3])
        zy = zy + part[3]
    return m, s, t, zy


def combine_stats(m: Tensor, s: Tensor, t: Tensor, zy: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(lse, logp, entropy) from global row statistics; invalid rows get logp = entropy = 0.

    lse = m + log s; logp = zy - lse; entropy = log s - t / s.
    """
    log_s = torch.log(s)
    lse = m + log_s
    zero = torch.zeros_like(lse)
    logp = torch.where(valid, zy - lse, zero)
    entropy = torch.where(valid, log_s - t / s, zero)
    return lse, logp, entropy
