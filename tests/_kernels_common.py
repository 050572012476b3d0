"""Shared parametrisations and the fp64 hand-derived reference for the sdar_kernels tests.

The reference never calls sdar_kernels: logits, log-probs and entropies are computed in fp64 from
the (possibly bf16-rounded) inputs, and the gradient uses the hand-derived
dz_j = a (1[j = y] − p_j) − b p_j (log p_j + H) (DESIGN §2), dh = dz W / T, dW = dzᵀ h / T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# (N, H, V): V not a multiple of any tile (1, 3, odd primes), H not a multiple of 16, N = 1.
# Triton runs through the interpreter, so its shapes stay tiny (N ≤ 16, V ≤ 300, H ≤ 40).
SHAPES = [(1, 8, 1), (5, 12, 3), (13, 20, 257), (16, 40, 299)]
CPU_ONLY_SHAPES = [(37, 24, 4099)]
IMPLS = ["chunked", "triton"]

# dtype → (k, atol): impl error ≤ k × naive-path error + atol × (1 + max |truth|).
TOLERANCES = {torch.float32: (4.0, 2e-5), torch.bfloat16: (2.0, 2e-3)}
KINDS = ["random", "peaked", "negative"]


def small_chunk(vocab: int) -> int:
    """A chunk_bytes budget of about 3 full-vocabulary rows: the chunked path walks several row blocks."""
    return vocab * 4 * 3 * 3


def tile_chunk(rows: int, vocab: int) -> int:
    """A budget of all rows × about a seventh of the vocabulary: with ``_MIN_TILE`` lowered (see
    ``narrow_tiles``) the chunked path walks several vocabulary tiles with a ragged last one."""
    return rows * 4 * 3 * max(5, vocab // 7)


def narrow_tiles(monkeypatch):
    """Lets the chunked backend cut the vocabulary into tiles as narrow as 5 columns."""
    from sdar_kernels import chunked
    monkeypatch.setattr(chunked, "_MIN_TILE", 5)


@dataclass
class Case:
    hidden: torch.Tensor      # (N, H) test dtype
    weight: torch.Tensor      # (V, H) test dtype
    labels: torch.Tensor      # (N,) int64, may hold -100
    temperature: float


def make_case(n: int, h: int, v: int, dtype: torch.dtype, kind: str = "random", seed: int = 0,
              ignore_rows: bool = True) -> Case:
    """Random inputs of one trap kind. peaked: T = 0.05 (max p > 0.999 on most rows, labels half at
    the argmax, half elsewhere); negative: every logit < 0, T = 1.7; random: T = 1."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) / h ** 0.5
    labels = torch.randint(0, v, (n,), generator=g)
    temperature = 1.0
    if kind == "peaked":
        temperature, hidden = 0.05, hidden * 4
        argmax = (hidden @ weight.T).argmax(1)
        labels = torch.where(torch.arange(n) % 2 == 0, argmax, labels)
    elif kind == "negative":
        hidden, weight, temperature = hidden.abs(), -weight.abs(), 1.7
    if ignore_rows and n > 2:
        labels[1] = -100
    case = Case(hidden.to(dtype), weight.to(dtype), labels, temperature)
    if kind == "peaked" and v > 1:
        z = truth(case.hidden, case.weight, labels.clamp_min(0), torch.ones(n, dtype=torch.bool), temperature)[0]
        assert (z.softmax(1).amax(1) > 0.999).float().mean() > 0.5, "peaked case is not peaked"
    if kind == "negative":
        assert (case.hidden.double() @ case.weight.double().T).max() < 0
    return case


def truth(hidden, weight, labels, valid, temperature, a=None, b=None):
    """fp64 (log-softmax [N, V], logp [N], entropy [N], dh, dW) with the hand-derived gradient.

    a, b: per-token upstream gradients of logp and entropy (None = no gradient wanted).
    Invalid rows give logp = entropy = 0 and contribute no gradient.
    """
    h, w = hidden.double(), weight.double()
    z = h @ w.T / temperature
    log_p = z - torch.logsumexp(z, dim=1, keepdim=True)
    p = log_p.exp()
    idx = torch.where(valid, labels, torch.zeros_like(labels))
    logp = torch.where(valid, log_p.gather(1, idx[:, None])[:, 0], torch.zeros(()).double())
    entropy = torch.where(valid, -(p * log_p).sum(1), torch.zeros(()).double())
    if a is None:
        return log_p, logp, entropy, None, None
    a = torch.where(valid, a.double(), torch.zeros(()).double())
    b = torch.zeros_like(a) if b is None else torch.where(valid, b.double(), torch.zeros(()).double())
    onehot = torch.zeros_like(z)
    onehot[torch.arange(len(idx)), idx] = 1.0
    dz = a[:, None] * (onehot - p) - b[:, None] * p * (log_p + entropy[:, None])
    dz = torch.where(valid[:, None], dz, torch.zeros(()).double())
    return log_p, logp, entropy, dz @ w / temperature, dz.T @ h / temperature


def err(x, ref) -> float:
    return (x.double() - ref.double()).abs().max().item() if ref.numel() else 0.0


def assert_within_naive(name: str, got, naive, ref, dtype: torch.dtype, magnitude: float = 0.0):
    """The error rule of STYLE §8: |got − ref| ≤ k·|naive − ref| + atol·(1 + max(max|ref|, magnitude)).

    ``magnitude``: the size of the terms that sum to ``ref`` where it can be far smaller than they are (a
    gradient that cancels exactly, e.g. V = 1, where p = 1 and dz = a (1 − p) = 0 however large the logits)."""
    k, atol = TOLERANCES[dtype]
    scale = 1.0 + max(ref.double().abs().max().item() if ref.numel() else 0.0, magnitude)
    e_got, e_naive = err(got, ref), err(naive, ref)
    assert torch.isfinite(got.double()).all(), f"{name}: non-finite values"
    assert e_got <= k * e_naive + atol * scale, (
        f"{name}: error {e_got:.3g} > {k} x naive error {e_naive:.3g} + {atol * scale:.3g}")
