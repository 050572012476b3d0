"""Row statistics → log-probs and entropies (shared by every backend and the autograd layer).

A backend returns per-row (m, s, t, zy) over its vocabulary shard: m = max z, s = Σ e^{z−m},
t = Σ (z−m) e^{z−m}, zy = z at the label (0 off-shard). ``merge_stats`` merges shards (what a
vocab-parallel run does with all-reduces) and ``combine_stats`` turns global statistics into
lse, logp and entropy.
"""

from __future__ import annotations

import torch
from torch import Tensor


def merge_stats(parts: list[tuple[Tensor, Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Merges per-vocabulary-shard (m, s, t, zy) into the statistics of the whole vocabulary.

    With M = max_r m_r and c_r = exp(m_r - M): s = Σ c_r s_r and, since t_r is taken about m_r,
    t = Σ c_r (t_r + (m_r - M) s_r); zy is held by exactly one shard and 0 elsewhere, so it sums.
    This is what a vocab-parallel run computes with all-reduces before ``combine_stats``.
    """
    m = torch.stack([p[0] for p in parts]).amax(0)
    s = torch.zeros_like(m)
    t = torch.zeros_like(m)
    zy = torch.zeros_like(m)
    for m_r, s_r, t_r, zy_r in parts:
        c = torch.exp(m_r - m)
        s += c * s_r
        t += c * (t_r + (m_r - m) * s_r)
        zy += zy_r
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
