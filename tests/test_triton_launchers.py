"""The Triton launchers of sdar_kernels.ops.triton_logprobs on their own, against fp64 references.

On a machine without CUDA the kernels run in the Triton interpreter (TRITON_INTERPRET=1, set here before
Triton is imported, as the project's conftest also does), so shapes stay tiny. The references below are
written from the formulas (fp64 logits, statistics and dz by hand) and the dz formula itself is checked
against fp64 autograd of a * logp + b * entropy.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

triton = pytest.importorskip("triton", reason="triton is not installed")

from sdar_kernels.ops import triton_logprobs as tk  # noqa: E402

try:  # property tests need hypothesis (a dev dependency); the rest of the module does not
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16] + ([torch.float16] if DEVICE == "cuda" else [])


# ---------------------------------------------------------------------------------------------------------
# fp64 references
# ---------------------------------------------------------------------------------------------------------


def ref_logits(h, w, temperature):
    """fp64 logits from the exact values of the (possibly bf16-rounded) inputs."""
    return (h.double() @ w.double().T) / temperature


def ref_stats(h, w, y, temperature, vocab_start=0):
    z = ref_logits(h, w, temperature)  # [N, V_local]
    m = z.max(dim=1).values
    e = torch.exp(z - m[:, None])
    s = e.sum(dim=1)
    t = ((z - m[:, None]) * e).sum(dim=1)
    local = y - vocab_start
    ok = (local >= 0) & (local < w.shape[0])
    zy = torch.where(ok, z.gather(1, torch.where(ok, local, 0)[:, None])[:, 0], torch.zeros_like(m))
    return m, s, t, zy


def ref_dz(z, y, lse, ent, a, b, vocab_start=0):
    """dz_j = a (1[j = y] - p_j) - b p_j (log p_j + H), all fp64, on the local columns."""
    logp = z - lse[:, None]
    p = torch.exp(logp)
    cols = torch.arange(z.shape[1], device=z.device) + vocab_start
    onehot = (cols[None, :] == y[:, None]).double()
    dz = a[:, None] * (onehot - p)
    if b is not None:
        dz = dz - b[:, None] * p * (logp + ent[:, None])
    return dz


def assert_close(out, ref, rel, what):
    """|out - ref| <= rel * (1 + max |ref|) elementwise; the scale keeps the bound meaningful for sums."""
    out = out.double().cpu()
    ref = ref.double().cpu()
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite values"
    err = (out - ref).abs().max().item() if out.numel() else 0.0
    bound = rel * (1.0 + (ref.abs().max().item() if ref.numel() else 0.0))
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"


def assert_close_vs_naive(out, ref, naive, what, k=2.0, rel=1e-6):
    """Error of ``out`` <= k x the error of the materialised naive path + rel * (1 + max |ref|)."""
    ref = ref.double().cpu()
    err = (out.double().cpu() - ref).abs().max().item()
    err_naive = (naive.double().cpu() - ref).abs().max().item()
    bound = k * err_naive + rel * (1.0 + ref.abs().max().item())
    assert torch.isfinite(out).all(), f"{what}: non-finite values"
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e} (naive path error {err_naive:.3e})"


def naive_grad(h, w, y, lse, ent, a, b, temperature, vocab_start=0):
    """The materialised path in the input precision: fp32 logits, dz in fp32, rounded to the input dtype
    for the two GEMMs (fp32 accumulation), dh returned in the input dtype."""
    z = (h.float() @ w.float().T).cpu() / temperature
    # recompute p in fp32 like a fp32 implementation would
    logp = z - lse.float()[:, None]
    p = torch.exp(logp)
    cols = torch.arange(z.shape[1]) + vocab_start
    dz = a.float()[:, None] * ((cols[None, :] == y.cpu()[:, None]).float() - p)
    if b is not None:
        dz = dz - b.float()[:, None] * p * (logp + ent.float()[:, None])
    dz = (dz / temperature).to(h.dtype).float()
    return (dz @ w.float().cpu()).to(h.dtype), dz.T @ h.float().cpu()


def make_case(n_rows, V, H, dtype, seed, *, scale=1.0, peaked=False, negative=False, vocab_total=None):
    """Random hidden segments, weight and labels. ``peaked``: each row's label logit dominates (max p > 0.999);
    ``negative``: a constant hidden feature times a -30 weight column pushes every logit below -20."""
    g = torch.Generator().manual_seed(seed)
    vocab_total = vocab_total or V
    w = torch.randn(V, H, generator=g) * scale / math.sqrt(H)
    hs, ys = [], []
    for n in n_rows:
        h = torch.randn(n, H, generator=g)
        y = torch.randint(0, vocab_total, (n,), generator=g)
        if peaked:
            h[:, :] = 0.1 * h
            h = h + 12.0 * w[y.clamp(max=V - 1)] / (w[y.clamp(max=V - 1)].norm(dim=1, keepdim=True) ** 2 + 1e-12)
            h = h * 3.0
        if negative:
            h[:, 0] = 1.0
        hs.append(h)
        ys.append(y)
    if negative:
        w[:, 0] = -30.0
    cast = lambda x: x.to(dtype).to(DEVICE)  # noqa: E731
    return [cast(h) for h in hs], cast(w), [y.to(DEVICE) for y in ys]


# ---------------------------------------------------------------------------------------------------------
# row_stats
# ---------------------------------------------------------------------------------------------------------

STATS_CASES = [
    # id, segment sizes, V, H, temperature, extra
    ("basic", (20,), 257, 40, 1.0, {}),
    ("two-segments", (7, 13), 3, 40, 1.0, {}),
    ("V1-N1", (1,), 1, 16, 1.0, {}),
    ("N1-teacher-T", (1, 5), 257, 40, 0.7, {}),
    ("peaked", (9, 4), 67, 24, 1.0, {"peaked": True}),
    ("all-negative", (6, 6), 50, 40, 1.3, {"negative": True}),
    ("v-splits", (11, 3), 257, 40, 1.0, {"v_splits": 3}),
    ("odd-blocks", (19,), 100, 40, 2.0, {"block_m": 32, "block_n": 16, "block_k": 32}),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", STATS_CASES, ids=lambda c: c[0])
def test_row_stats_matches_fp64(case, dtype):
    name, n_rows, V, H, temp, extra = case
    launch = {k: v for k, v in extra.items() if k not in ("peaked", "negative")}
    hs, w, ys = make_case(n_rows, V, H, dtype, seed=len(name) + V,
                          peaked=extra.get("peaked", False), negative=extra.get("negative", False))
    if name == "two-segments":
        ys[0][0] = -100  # ignore_index: zy must be 0 and never be used as an address
    m, s, t, zy = tk.row_stats(hs, w, ys, temperature=temp, **launch)
    for out in (m, s, t, zy):
        assert out.dtype == torch.float32 and out.shape == (sum(n_rows),)
    refs = [ref_stats(h, w, y, temp) for h, y in zip(hs, ys)]
    rm, rs, rt, rzy = (torch.cat([r[i] for r in refs]) for i in range(4))
    if extra.get("peaked"):
        assert (1.0 / rs > 0.999).all(), "test setup: logits are not peaked (max p = exp(0) / s)"
    if extra.get("negative"):
        assert (rm < -20).all(), "test setup: logits are not all below -20"
    assert_close(m, rm, 1e-5, "m")
    assert_close(s, rs, 1e-5, "s")
    assert_close(t, rt, 1e-5, "t")
    assert_close(zy, rzy, 1e-5, "zy")
    # Derived quantities as the autograd layer forms them.
    lse, rlse = m.double() + torch.log(s.double()), rm + torch.log(rs)
    assert_close(lse, rlse, 1e-5, "lse")
    assert_close(torch.log(s.double()) - t.double() / s.double(), torch.log(rs) - rt / rs, 1e-5, "entropy")
    if name == "two-segments":
        assert zy[0].item() == 0.0


def test_row_stats_vocab_shard_and_out_of_range_labels():
    """A shard [128, 300) of a 300-token head: stats over the shard only, zy = 0 for labels elsewhere."""
    V_total, start, H = 300, 128, 40
    hs, w_full, ys = make_case((12, 5), V_total, H, torch.float32, seed=3)
    ys[0][:4] = torch.tensor([-100, 0, 127, 299])
    ys[1][:2] = torch.tensor([128, 300])  # 300 is past the end of the head: outside every shard
    w = w_full[start:]
    m, s, t, zy = tk.row_stats(hs, w, ys, temperature=0.9, vocab_start=start)
    refs = [ref_stats(h, w, y, 0.9, vocab_start=start) for h, y in zip(hs, ys)]
    rm, rs, rt, rzy = (torch.cat([r[i] for r in refs]) for i in range(4))
    assert_close(m, rm, 1e-5, "m")
    assert_close(s, rs, 1e-5, "s")
    assert_close(t, rt, 1e-5, "t")
    assert_close(zy, rzy, 1e-5, "zy")
    expect_zero = torch.tensor([1, 1, 1, 0] + [0] * 8 + [0, 1, 0, 0, 0], dtype=torch.bool)
    assert (zy.cpu()[expect_zero] == 0).all()
    assert (zy.cpu()[[3, 12]] != 0).all()
    # The two shards merged give the statistics of the whole head.
    m0, s0, t0, zy0 = tk.row_stats(hs, w_full[:start], ys, temperature=0.9)
    mg = torch.maximum(m, m0)
    sg = s * torch.exp(m - mg) + s0 * torch.exp(m0 - mg)
    full = [ref_stats(h, w_full, y.clamp(0, V_total - 1), 0.9) for h, y in zip(hs, ys)]
    assert_close(mg + torch.log(sg), torch.cat([f[0] + torch.log(f[1]) for f in full]), 1e-5, "merged lse")


def test_row_stats_empty_and_bad_input():
    hs, w, ys = make_case((0,), 10, 16, torch.float32, seed=0)
    outs = tk.row_stats(hs, w, ys, temperature=1.0)
    assert all(o.shape == (0,) for o in outs)
    hs, w, ys = make_case((3,), 10, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="hidden"):
        tk.row_stats([hs[0][:, :8]], w, ys, temperature=1.0)
    with pytest.raises(TypeError, match="dtype"):
        tk.row_stats([hs[0].double()], w, ys, temperature=1.0)
    with pytest.raises(ValueError, match="labels"):
        tk.row_stats(hs, w, [ys[0].int()], temperature=1.0)
    with pytest.raises(ValueError, match="segments"):
        tk.row_stats(hs * 3, w, ys * 3, temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        tk.row_stats(hs, w, ys, temperature=0.0)
    with pytest.raises(ValueError, match="block_n"):
        tk.row_stats(hs, w, ys, temperature=1.0, block_n=8)


# ---------------------------------------------------------------------------------------------------------
# grad
# ---------------------------------------------------------------------------------------------------------


def test_dz_formula_matches_fp64_autograd():
    """The hand formula used by the reference (and the kernel) is the gradient of sum a*logp_y + b*H."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(6, 11, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = torch.randint(0, 11, (6,), generator=g)
    a = torch.randn(6, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    logp = torch.log_softmax(z, dim=1)
    ent = -(logp.exp() * logp).sum(dim=1)
    (a * logp.gather(1, y[:, None])[:, 0] + b * ent).sum().backward()
    lse = torch.logsumexp(z, dim=1).detach()
    assert torch.allclose(ref_dz(z.detach(), y, lse, ent.detach(), a, b), z.grad, atol=1e-12)


def _grad_case(n, V, H, dtype, temp, *, seed, vocab_start=0, vocab_total=None, peaked=False, negative=False):
    hs, w_full, ys = make_case((n,), vocab_total or V, H, dtype, seed=seed, peaked=peaked, negative=negative)
    h, y = hs[0], ys[0]
    z_full = ref_logits(h, w_full, temp)
    lse = torch.logsumexp(z_full, dim=1)
    ent = lse - (torch.softmax(z_full, dim=1) * z_full).sum(dim=1)  # H = lse - sum p z
    w = w_full[vocab_start:vocab_start + V]
    return h, w, y, lse, ent


GRAD_CASES = [
    # id, N, V, H, temperature, extra
    ("basic", 20, 257, 40, 1.0, {}),
    ("N1-V3", 1, 3, 40, 0.8, {}),
    ("V1", 5, 1, 16, 1.0, {}),
    ("peaked", 9, 67, 24, 1.0, {"peaked": True}),
    ("all-negative", 7, 50, 40, 1.3, {"negative": True}),
    ("shard", 13, 150, 40, 1.5, {"vocab_start": 100, "vocab_total": 300}),
]


# "workspace-chunked": a 1-byte budget forces chunks of one row block (16 rows in the interpreter).
# "two_pass-sliced": the same budget forces vocabulary slices of one tile in its dW pass.
STRATEGY_OPTIONS = {"atomic": dict(strategy="atomic"), "workspace": dict(strategy="workspace"),
                    "workspace-chunked": dict(strategy="workspace", workspace_bytes=1),
                    "two_pass": dict(strategy="two_pass"),
                    "two_pass-sliced": dict(strategy="two_pass", workspace_bytes=1)}


@pytest.mark.parametrize("strategy", list(STRATEGY_OPTIONS))
@pytest.mark.parametrize("with_entropy", [False, True], ids=["logp-only", "with-entropy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c[0])
def test_grad_matches_fp64(case, dtype, with_entropy, strategy):
    name, n, V, H, temp, extra = case
    vs = extra.get("vocab_start", 0)
    h, w, y, lse, ent = _grad_case(n, V, H, dtype, temp, seed=n + V, vocab_start=vs,
                                   vocab_total=extra.get("vocab_total"), peaked=extra.get("peaked", False),
                                   negative=extra.get("negative", False))
    g = torch.Generator().manual_seed(7)
    a = torch.randn(n, generator=g, dtype=torch.float64)  # a per-token upstream gradient, not a constant
    b = torch.randn(n, generator=g, dtype=torch.float64) if with_entropy else None
    y = y.clone()
    if n > 2:
        y[0] = -100  # ignored row: the autograd layer zeroes its coefficients
        a[0] = 0.0
        if b is not None:
            b[0] = 0.0
    if name == "shard":
        y[1] = 5  # label in another shard: no one-hot column here, the -p terms remain
    to32 = lambda x: x.float().to(DEVICE)  # noqa: E731
    dh, dw = tk.grad(h, w, y, to32(lse), to32(ent), to32(a), None if b is None else to32(b),
                     temperature=temp, vocab_start=vs, **STRATEGY_OPTIONS[strategy])
    # Reference from the fp32-rounded lse/entropy the kernel received.
    lse32, ent32 = lse.float().double().cpu(), ent.float().double().cpu()
    b64 = None if b is None else b.double()
    hc, wc = h.cpu(), w.cpu()
    dz = ref_dz(ref_logits(hc, wc, temp), y.cpu(), lse32, ent32, a, b64, vocab_start=vs)
    rdh = dz @ wc.double() / temp
    rdw = dz.T @ hc.double() / temp
    ndh, ndw = naive_grad(h, w, y, lse32, ent32, a, b64, temp, vs)
    two_pass = strategy.startswith("two_pass")
    assert dh.dtype == h.dtype and dh.shape == h.shape
    assert dw.dtype == (w.dtype if two_pass else torch.float32) and dw.shape == w.shape
    # A peaked softmax makes dz = a (1 - p_y) a difference of nearly equal numbers: the bound is the naive
    # path's own error (fp32 logits; dz rounded to the input dtype before the GEMMs, as autograd would).
    assert_close_vs_naive(dh, rdh, ndh, "dh")
    if two_pass:  # dW written in the head's dtype: the naive path's dW rounded the same way (one rounding each,
        # which may fall on either side of a tie: k = 4)
        assert_close_vs_naive(dw, rdw, ndw.to(w.dtype), "dW", k=4.0)
    else:
        assert_close_vs_naive(dw, rdw, ndw, "dW")
    if n > 2:
        assert (dh[0].float() == 0).all(), "an ignored row must get an exactly zero gradient"


@pytest.mark.parametrize("strategy", list(STRATEGY_OPTIONS))
def test_grad_partial_requests(strategy):
    h, w, y, lse, ent = _grad_case(20, 90, 40, torch.float32, 1.0, seed=11)
    a = torch.randn(20).to(DEVICE)
    b = torch.randn(20).to(DEVICE)
    args = (h, w, y, lse.float().to(DEVICE), ent.float().to(DEVICE), a, b)
    opts = STRATEGY_OPTIONS[strategy]
    dh_full, dw_full = tk.grad(*args, temperature=1.0, **opts)
    dh, dw = tk.grad(*args, temperature=1.0, need_weight_grad=False, **opts)
    assert dw is None and torch.allclose(dh, dh_full, rtol=0, atol=1e-6)
    dh, dw = tk.grad(*args, temperature=1.0, need_hidden_grad=False, **opts)
    assert dh is None and torch.allclose(dw, dw_full, rtol=0, atol=1e-6)
    assert tk.grad(*args, temperature=1.0, need_hidden_grad=False, need_weight_grad=False, **opts) == (None, None)
    empty = tk.grad(h[:0], w, y[:0], *(x[:0] for x in args[3:]), temperature=1.0, **opts)
    assert empty[0].shape == (0, 40) and (empty[1] == 0).all() and empty[1].shape == w.shape


def test_grad_skip_threshold():
    h, w, y, lse, ent = _grad_case(10, 90, 40, torch.float32, 1.0, seed=11)
    a = torch.randn(10).to(DEVICE)
    b = torch.randn(10).to(DEVICE)
    args = (h, w, y, lse.float().to(DEVICE), ent.float().to(DEVICE), a, b)
    dh_full, dw_full = tk.grad(*args, temperature=1.0, strategy="atomic")
    # Threshold 0 skips nothing: identical to the exact path. An infinite one skips every tile.
    dh0, dw0 = tk.grad(*args, temperature=1.0, strategy="atomic", skip_threshold=0.0)
    assert torch.allclose(dh0, dh_full, rtol=0, atol=1e-6) and torch.allclose(dw0, dw_full, rtol=0, atol=1e-6)
    dhi, dwi = tk.grad(*args, temperature=1.0, strategy="atomic", skip_threshold=float("inf"))
    assert (dhi == 0).all() and (dwi == 0).all()
    # A moderate threshold drops only small tiles: each skipped tile changes a dh entry by at most
    # 16 columns x threshold x max |W|.
    thr = 1e-3
    dhs, dws = tk.grad(*args, temperature=1.0, strategy="atomic", skip_threshold=thr, block_m=16, block_n=16)
    assert (dhs - dh_full).abs().max() <= thr * 16 * w.abs().max() * triton.cdiv(90, 16) + 1e-6
    with pytest.raises(ValueError, match="grad_logp"):
        tk.grad(h, w, y, args[3], args[4], a[:3], None, temperature=1.0)
    with pytest.raises(ValueError, match="skip_threshold"):
        tk.grad(*args, temperature=1.0, strategy="atomic", skip_threshold=-1.0)
    with pytest.raises(ValueError, match="skip_threshold"):
        tk.grad(*args, temperature=1.0, strategy="workspace", skip_threshold=1e-3)
    with pytest.raises(ValueError, match="strategy"):
        tk.grad(*args, temperature=1.0, strategy="fused")


# ---------------------------------------------------------------------------------------------------------
# Compilation for CUDA (no GPU needed) and the large-vocabulary case on a GPU
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kernels_compile_for_hopper():
    """Both kernels compile for sm_90 with their default CUDA configurations (bf16/fp16 on wgmma)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "compile_check.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("wgmma") >= 4, run.stdout


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the full Qwen3 vocabulary")
@pytest.mark.parametrize("strategy", ["workspace", "atomic", "two_pass"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_large_vocabulary_on_gpu(dtype, strategy):
    """V = 151,936 - 5 (not a multiple of any tile), H = 2048, two segments, a per-token gradient."""
    V, H = 151_936 - 5, 2048
    hs, w, ys = make_case((37, 29), V, H, dtype, seed=5, scale=4.0)
    ys[0][0] = -100
    m, s, t, zy = tk.row_stats(hs, w, ys, temperature=1.0)
    refs = [ref_stats(h, w, y, 1.0) for h, y in zip(hs, ys)]
    rm, rs, rt, rzy = (torch.cat([r[i] for r in refs]) for i in range(4))
    # s and t are fp32 sums over the whole vocabulary, accumulated tile by tile (the online softmax): the
    # recursive-summation bound over ceil(V / 128) partial sums, (V / 128) * 2^-24 relative (7e-5 here).
    sum_rel = max(1e-5, math.ceil(V / 128) * 2.0**-24)
    for out, ref, what, rel in ((m, rm, "m", 1e-5), (s, rs, "s", sum_rel), (t, rt, "t", sum_rel),
                                (zy, rzy, "zy", 1e-5)):
        assert_close(out, ref, rel, what)
    h, y = hs[0], ys[0]
    z = ref_logits(h, w, 1.0)
    lse = torch.logsumexp(z, dim=1)
    ent = lse - (torch.softmax(z, dim=1) * z).sum(dim=1)
    a = torch.randn(h.shape[0], dtype=torch.float64, device=DEVICE)
    b = torch.randn(h.shape[0], dtype=torch.float64, device=DEVICE)
    a[0] = b[0] = 0.0
    dh, dw = tk.grad(h, w, y, lse.float(), ent.float(), a.float(), b.float(), temperature=1.0,
                     strategy=strategy)
    lse32, ent32 = lse.float().double(), ent.float().double()
    dz = ref_dz(z, y, lse32, ent32, a, b)
    ndh, ndw = naive_grad(h, w, y, lse32.cpu(), ent32.cpu(), a.cpu(), b.cpu(), 1.0)
    assert_close_vs_naive(dh, dz @ w.double(), ndh, "dh")
    if strategy == "two_pass":
        assert_close_vs_naive(dw, dz.T @ h.double(), ndw.to(w.dtype), "dW", k=4.0)
    else:
        assert_close_vs_naive(dw, dz.T @ h.double(), ndw, "dW")


def test_fp32_accumulation_fallbacks(monkeypatch):
    """The workspace strategy's dW accumulation falls back until one way works (here: CPU has no kernel for
    the mixed-dtype overloads, so it ends at fp32 copies) and still adds a @ b exactly once."""
    monkeypatch.setattr(tk, "_MIXED_MODE", [0])
    g = torch.Generator().manual_seed(1)
    a = torch.randn(9, 5, generator=g).bfloat16()
    b = torch.randn(5, 7, generator=g).bfloat16()
    out = torch.randn(9, 7, generator=g)
    expect = out.double() + a.double() @ b.double()
    tk._accumulate_fp32(out, a, b, native=True)
    assert torch.allclose(out.double(), expect, atol=1e-5)
    assert tk._MIXED_MODE[0] in (0, 1, 2)


def _property_test(fn):
    if given is None:
        return pytest.mark.skip(reason="hypothesis is not installed")(fn)
    return settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))(given(
        n0=st.integers(0, 20), n1=st.integers(0, 9), V=st.integers(1, 70), H=st.integers(1, 48),
        vocab_start=st.integers(0, 5), temp=st.floats(0.25, 4.0), seed=st.integers(0, 2**16),
        strategy=st.sampled_from(list(STRATEGY_OPTIONS)))(fn))


@_property_test
def test_launchers_property(n0, n1, V, H, vocab_start, temp, seed, strategy):
    """Random shapes (empty segments, H < BLOCK_K, V < BLOCK_N), shards, temperatures and labels that fall
    anywhere (inside, other shards, -100): row_stats and grad agree with the fp64 reference."""
    g = torch.Generator().manual_seed(seed)
    v_total = vocab_start + V + 3
    w_full = torch.randn(v_total, H, generator=g) * 2 / math.sqrt(H)
    hs = [torch.randn(n, H, generator=g) for n in (n0, n1)]
    ys = [torch.randint(-1, v_total + 2, (n,), generator=g) for n in (n0, n1)]
    ys = [torch.where(y < 0, torch.full_like(y, -100), y) for y in ys]
    w = w_full[vocab_start:vocab_start + V]
    dev = lambda x: x.to(DEVICE)  # noqa: E731
    m, s, t, zy = tk.row_stats([dev(h) for h in hs], dev(w), [dev(y) for y in ys], temperature=temp,
                               vocab_start=vocab_start)
    refs = [ref_stats(h, w, y, temp, vocab_start) for h, y in zip(hs, ys)]
    for i, (out, what) in enumerate(((m, "m"), (s, "s"), (t, "t"), (zy, "zy"))):
        assert_close(out, torch.cat([r[i] for r in refs]), 1e-5, what)
    if n0 == 0:
        return
    h, y = hs[0], ys[0]
    z_full = ref_logits(h, w_full, temp)
    lse = torch.logsumexp(z_full, dim=1).float().double()
    ent = (lse - (torch.softmax(z_full, dim=1) * z_full).sum(dim=1)).float().double()
    a = torch.randn(n0, generator=g, dtype=torch.float64)
    b = torch.randn(n0, generator=g, dtype=torch.float64)
    dh, dw = tk.grad(dev(h), dev(w), dev(y), dev(lse.float()), dev(ent.float()), dev(a.float()), dev(b.float()),
                     temperature=temp, vocab_start=vocab_start, **STRATEGY_OPTIONS[strategy])
    dz = ref_dz(ref_logits(h, w, temp), y, lse, ent, a, b, vocab_start)
    ndh, ndw = naive_grad(h, w, y, lse, ent, a, b, temp, vocab_start)
    assert_close_vs_naive(dh, dz @ w.double() / temp, ndh, "dh")
    assert_close_vs_naive(dw, dz.T @ h.double() / temp, ndw, "dW")


def test_backward_strategy_from_environment(monkeypatch):
    """SDAR_TRITON_BACKWARD picks the public API's backward: two_pass gives the same gradients as the
    default through sdar_loss; an unknown value is an error that names the variable."""
    import sdar_kernels as sk

    g = torch.Generator().manual_seed(3)
    hs, ht = torch.randn(21, 24, generator=g), torch.randn(21, 24, generator=g)
    w = torch.randn(150, 24, generator=g) / 5
    y = torch.randint(0, 150, (21,), generator=g)
    grads = {}
    for strategy in ("workspace", "two_pass"):
        monkeypatch.setenv("SDAR_TRITON_BACKWARD", strategy)
        h, wt = hs.clone().requires_grad_(), w.clone().requires_grad_()
        out = sk.sdar_loss(h.to(DEVICE), ht.to(DEVICE), wt.to(DEVICE), y.to(DEVICE), impl="triton")
        (out.loss + 0.3 * out.student_logp.sum()).backward()
        grads[strategy] = (h.grad, wt.grad)
    for a, b in zip(*grads.values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("SDAR_TRITON_BACKWARD", "fastest")
    with pytest.raises(ValueError, match="SDAR_TRITON_BACKWARD"):
        tk.grad(hs, w, y, torch.zeros(21), torch.zeros(21), torch.ones(21), None, temperature=1.0)
