"""fused_divergence / gated_divergence against an fp64 reference with hand-derived gradients.

The reference below computes D_t and ∂D_t/∂z_S in float64 from the formulas (not by autograd of the
package's naive path); ``test_reference_gradient_is_autograd_of_its_value`` checks those hand
derivations once against fp64 autograd. The error rule (STYLE §8): an implementation's error against
the fp64 truth may be at most 2× the naive path's own error (same dtype) plus a small tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

from sdar_kernels.divergence import fused_divergence, gated_divergence

KINDS = ("reverse_kl", "forward_kl", "jsd")
IMPLS = ("naive", "chunked", "triton")
REDUCTIONS = ("mean", "sum", "none")
# (dtype, relative tolerance on top of 2 × the naive path's error)
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 8e-3)]
SMALL_CHUNK = 20_000  # a few rows per chunk at V = 257, so chunk boundaries are exercised


# ----------------------------------------------------------------------------------------------- reference
def ref_divergence(hs, ht, w, m, *, kind, beta=0.5, tau=1.0, top_k=None, reduction="mean", upstream=None,
                   gate=None, floors=False):
    """fp64 value and hand-derived (dh, dW) of the reduced divergence; hs/ht (N, H), w (V, H), m (N,).

    floors=True also returns the fp32 input-rounding floors of dh and dW: any fp32 implementation rounds the
    logits by up to u·|z| (u = 2⁻²⁴), which moves every p_j, hence dz_j, by a relative u·max|z| to first
    order; through dh = dz W and dW = dzᵀ h that is at most u·max|z|·(|dz| |W|) and u·max|z|·(|dz|ᵀ |h|)
    element-wise. It matters where a head column shared by the whole vocabulary cancels in Σ_j dz_j W_j
    (all-negative logits), and there it depends on the BLAS's summation order, not only on the method."""
    hs, ht, w = hs.double(), ht.double(), w.double()
    m = m.double()
    z_s, z_t = hs @ w.t() / tau, ht.detach() @ w.detach().t() / tau  # (N, V); the teacher is detached
    vocab = w.shape[0]
    idx = None
    if top_k is not None and top_k < vocab:
        idx = z_t.topk(top_k, dim=-1).indices
        z_s, z_t = z_s.gather(1, idx), z_t.gather(1, idx)
    lp_s = z_s - z_s.logsumexp(-1, keepdim=True)
    lp_t = z_t - z_t.logsumexp(-1, keepdim=True)
    p_s, p_t = lp_s.exp(), lp_t.exp()
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"  # TRL's end points
    if kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "reverse_kl":
        d = (p_s * (lp_s - lp_t)).sum(-1)
        g = p_s * (lp_s - lp_t - d[:, None])
    elif kind == "forward_kl":
        d = (p_t * (lp_t - lp_s)).sum(-1)
        g = p_s - p_t
    else:
        lp_m = torch.log(beta * p_t + (1 - beta) * p_s)  # the mixture in probability space
        a = (p_s * (lp_s - lp_m)).sum(-1)
        b = (p_t * (lp_t - lp_m)).sum(-1)
        d = beta * b + (1 - beta) * a
        g = (1 - beta) * p_s * (lp_s - lp_m - a[:, None])
    if idx is not None:
        g = torch.zeros(hs.shape[0], vocab, dtype=torch.float64).scatter(1, idx, g)
    c = m if gate is None else m * gate.double()
    if reduction == "mean":
        c = c / m.sum() if m.sum() > 0 else torch.zeros_like(c)
    if reduction == "none":
        out = c * d
        coef = c * (torch.ones_like(c) if upstream is None else upstream.double())
    else:
        out = (c * d).sum()
        coef = c * (1.0 if upstream is None else float(upstream))
    dz = coef[:, None] * g / tau
    if not floors:
        return out, dz @ w, dz.t() @ hs
    if dz.numel() == 0:
        return (out, dz @ w, dz.t() @ hs), (0.0, 0.0)
    u_z = 2.0 ** -24 * max(z_s.abs().max().item(), z_t.abs().max().item())
    return (out, dz @ w, dz.t() @ hs), (u_z * (dz.abs() @ w.abs()).max().item(),
                                        u_z * (dz.abs().t() @ hs.abs()).max().item())


# ----------------------------------------------------------------------------------------------- helpers
def make_inputs(n=10, h=40, v=257, dtype=torch.float32, seed=0, scale_s=1.0, scale_t=1.0, lead=(2, 5)):
    gen = torch.Generator().manual_seed(seed)
    hs = (torch.randn(n, h, generator=gen) * scale_s).to(dtype)
    ht = (torch.randn(n, h, generator=gen) * scale_t).to(dtype)
    w = (torch.randn(v, h, generator=gen) / math.sqrt(h) * 2.0).to(dtype)
    labels = torch.randint(0, v, (n,), generator=gen)
    if n > 2:
        labels[1] = labels[n - 1] = -100
    if lead is not None and math.prod(lead) == n:
        hs, ht, labels = hs.reshape(*lead, h), ht.reshape(*lead, h), labels.reshape(lead)
    return hs, ht, w, labels


def run(impl, hs, ht, w, lm, *, upstream=None, grad_w=True, grad_h=True, **kw):
    """Value, dh, dW of one call (fresh leaves); upstream: per-token (none) or scalar weight."""
    hs_ = hs.detach().clone().requires_grad_(grad_h)
    ht_ = ht.detach().clone()
    w_ = w.detach().clone().requires_grad_(grad_w)
    if impl == "chunked":
        kw.setdefault("chunk_bytes", SMALL_CHUNK)
    out = fused_divergence(hs_, ht_, w_, lm, impl=impl, **kw)
    if grad_h or grad_w:
        up = torch.ones_like(out) if upstream is None else upstream.reshape(out.shape).float()
        (out * up).sum().backward()
    return out.detach(), hs_.grad, w_.grad


def mask_of(lm, ignore_index=-100):
    lm = lm.reshape(-1)
    if lm.dtype == torch.int64:
        return (lm != ignore_index).double()
    return lm.double()


def assert_close_rule(got, naive, ref, rtol, name, floor=0.0):
    """|got − ref| ≤ 2·|naive − ref| + rtol·max|ref| + floor + 1e-6 (element-wise maxima; floor: the fp32
    input-rounding floor of ``ref_divergence(floors=True)``)."""
    ref = ref.double()
    scale = ref.abs().max().item() if ref.numel() else 0.0
    err = (got.double().reshape(ref.shape) - ref).abs().max().item() if ref.numel() else 0.0
    err_naive = (naive.double().reshape(ref.shape) - ref).abs().max().item() if ref.numel() else 0.0
    bound = 2 * err_naive + rtol * scale + floor + 1e-6
    assert err <= bound, (f"{name}: error {err:.3e} > bound {bound:.3e} (naive error {err_naive:.3e}, scale "
                          f"{scale:.3e}, fp32 floor {floor:.3e})")


def compare(impl, hs, ht, w, lm, rtol, *, upstream=None, ref_kw=None, **kw):
    """Run impl and naive, compare both with the fp64 reference (value, dh, dW)."""
    h = hs.shape[-1]
    ref_kw = dict(ref_kw or {})
    ref, (floor_dh, floor_dw) = ref_divergence(
        hs.reshape(-1, h), ht.reshape(-1, h), w, mask_of(lm), upstream=upstream, reduction=kw.get("reduction", "mean"),
        kind=kw.get("kind", "reverse_kl"), beta=kw.get("beta", 0.5), tau=kw.get("temperature", 1.0),
        top_k=kw.get("top_k"), floors=True, **ref_kw)
    got = run(impl, hs, ht, w, lm, upstream=upstream, **kw)
    naive = run("naive", hs, ht, w, lm, upstream=upstream, **kw)
    for name, g, n, r, floor in zip(("value", "dh", "dW"), got, naive, ref, (0.0, floor_dh, floor_dw)):
        assert g is not None, f"{impl}: {name} missing"
        assert torch.isfinite(g).all(), f"{impl}: {name} has non-finite entries"
        assert_close_rule(g, n, r, rtol, f"{impl} {name}", floor)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == hs.dtype and got[2].dtype == w.dtype
    return got, ref


# ----------------------------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("kind", KINDS)
def test_reference_gradient_is_autograd_of_its_value(kind):
    """The hand-derived gradients of the fp64 reference equal fp64 autograd of its own value."""
    hs, ht, w, labels = make_inputs(lead=None)
    up = torch.randn(10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for top_k, tau in ((None, 1.0), (7, 0.7)):
        hs64 = hs.double().requires_grad_(True)
        w64 = w.double().requires_grad_(True)
        out, dh, dw = ref_divergence(hs64, ht, w64, mask_of(labels), kind=kind, beta=0.3, tau=tau, top_k=top_k,
                                     reduction="none", upstream=up)
        (out * up).sum().backward()
        torch.testing.assert_close(dh, hs64.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(dw, w64.grad, rtol=1e-10, atol=1e-12)


def test_jsd_matches_trl_generalized_jsd_loss():
    """Our JSD_β (and its β = 0 / 1 end points) is TRL's GKD ``generalized_jsd_loss`` per token."""
    GKDTrainer = pytest.importorskip("trl.experimental.gkd.gkd_trainer").GKDTrainer  # absent on the GPU image

    hs, ht, w, labels = make_inputs(lead=None)
    z_s, z_t = (hs.double() @ w.double().t()), (ht.double() @ w.double().t())
    for beta in (0.0, 0.2, 0.5, 0.9, 1.0):
        trl_rows = GKDTrainer.generalized_jsd_loss(z_s[None], z_t[None], beta=beta, temperature=1.3,
                                                   reduction="none").sum(-1)[0]  # (N,) per token
        ours = fused_divergence(hs, ht, w, torch.ones(10, dtype=torch.bool), kind="jsd", beta=beta,
                                temperature=1.3, reduction="none", impl="chunked")
        torch.testing.assert_close(ours.double(), trl_rows, rtol=1e-5, atol=1e-6)
        if beta in (0.0, 1.0):  # the end points are the KLs
            kl = fused_divergence(hs, ht, w, torch.ones(10, dtype=torch.bool), temperature=1.3, reduction="none",
                                  kind="forward_kl" if beta == 0.0 else "reverse_kl", impl="chunked")
            torch.testing.assert_close(ours, kl, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- main grid
@pytest.mark.parametrize("dtype,rtol", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_value_and_gradient(kind, impl, reduction, dtype, rtol):
    hs, ht, w, labels = make_inputs(dtype=dtype)
    up = torch.randn(10, generator=torch.Generator().manual_seed(2)) if reduction == "none" else None
    compare(impl, hs, ht, w, labels, rtol, upstream=up, kind=kind, reduction=reduction, beta=0.3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_temperature_odd_h_and_per_token_upstream(kind, impl):
    """τ ≠ 1, H = 23 (not a multiple of 16), random per-token upstream gradient, lead shape (3, 4)."""
    hs, ht, w, labels = make_inputs(n=12, h=23, v=131, lead=(3, 4), seed=3)
    up = torch.randn(12, generator=torch.Generator().manual_seed(4)) * 3
    compare(impl, hs, ht, w, labels, 1e-5, upstream=up, kind=kind, reduction="none", temperature=0.6)


@pytest.mark.parametrize("vocab", [1, 3, 17])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_small_odd_vocab(kind, impl, vocab):
    hs, ht, w, labels = make_inputs(n=5, h=19, v=vocab, lead=None, seed=5)
    up = torch.randn(5, generator=torch.Generator().manual_seed(6))
    (val, dh, dw), (ref, _, _) = compare(impl, hs, ht, w, labels, 1e-5, upstream=up, kind=kind, reduction="none")
    if vocab == 1:  # a single token: both distributions are the same point mass
        assert val.abs().max().item() == 0.0 and dh.abs().max().item() <= 1e-7 and dw.abs().max().item() <= 1e-7


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_peaked_and_all_negative_logits(kind, impl):
    # peaked: max p > 0.999 on both sides (different tokens, a large divergence)
    hs, ht, w, labels = make_inputs(seed=7, scale_s=12.0, scale_t=12.0)
    p_max = torch.softmax(hs.reshape(-1, 40) @ w.t(), -1).max(-1).values
    assert (p_max > 0.999).float().mean() > 0.5
    compare(impl, hs, ht, w, labels, 1e-5, kind=kind, reduction="mean")
    # all-negative logits: a constant hidden component against a very negative head column
    hs, ht, w, labels = make_inputs(seed=8)
    hs[..., 0], ht[..., 0], w[:, 0] = 1.0, 1.0, -60.0
    assert ((hs.reshape(-1, 40) @ w.t()).max() < -30) and ((ht.reshape(-1, 40) @ w.t()).max() < -30)
    compare(impl, hs, ht, w, labels, 1e-5, kind=kind, reduction="sum")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_teacher_equals_student_is_zero(kind, impl):
    hs, _, w, labels = make_inputs(seed=9)
    for reduction in ("mean", "none"):
        val, dh, dw = run(impl, hs, hs, w, labels, kind=kind, reduction=reduction, temperature=0.8)
        assert val.abs().max().item() <= 1e-6
        assert dh.abs().max().item() <= 1e-6 and dw.abs().max().item() <= 1e-6


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_masks_and_fully_masked(kind, impl):
    hs, ht, w, _ = make_inputs(seed=10)
    gen = torch.Generator().manual_seed(11)
    bool_mask = torch.rand(2, 5, generator=gen) > 0.4
    float_mask = torch.rand(2, 5, generator=gen) * bool_mask
    up = torch.randn(10, generator=gen)
    compare(impl, hs, ht, w, bool_mask, 1e-5, kind=kind, reduction="mean")
    compare(impl, hs, ht, w, float_mask, 1e-5, kind=kind, reduction="mean")
    (val, dh, _), _ = compare(impl, hs, ht, w, bool_mask, 1e-5, upstream=up, kind=kind, reduction="none")
    assert (val[~bool_mask] == 0).all() and (dh[~bool_mask] == 0).all()  # excluded rows: exact zeros
    # ignore_index other than -100
    labels = torch.randint(0, 257, (2, 5), generator=gen)
    labels[0, 2] = labels[1, 4] = 7
    compare(impl, hs, ht, w, labels, 1e-5, kind=kind, reduction="mean", ignore_index=7)
    # every row masked → 0, zero gradients, no NaN
    for lm, reduction in ((torch.zeros(2, 5, dtype=torch.bool), "mean"), (torch.full((2, 5), -100), "sum"),
                          (torch.zeros(2, 5), "none")):
        val, dh, dw = run(impl, hs, ht, w, lm, kind=kind, reduction=reduction)
        assert (val == 0).all() and (dh == 0).all() and (dw == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_frozen_head_and_partial_requires_grad(kind, impl):
    hs, ht, w, labels = make_inputs(seed=12)
    up = torch.randn(10, generator=torch.Generator().manual_seed(13))
    _, dh_ref, dw_ref = ref_divergence(hs.reshape(10, 40), ht.reshape(10, 40), w, mask_of(labels), kind=kind,
                                       reduction="none", upstream=up)
    for reduction in ("mean", "none"):
        u = up if reduction == "none" else None
        _, dh_full, dw_full = ref_divergence(hs.reshape(10, 40), ht.reshape(10, 40), w, mask_of(labels),
                                             kind=kind, reduction=reduction, upstream=u)
        _, dh, dw = run(impl, hs, ht, w, labels, grad_w=False, upstream=u, kind=kind, reduction=reduction)
        assert dw is None
        torch.testing.assert_close(dh.double().reshape(10, 40), dh_full, rtol=1e-4, atol=1e-6)
        _, dh, dw = run(impl, hs, ht, w, labels, grad_h=False, upstream=u, kind=kind, reduction=reduction)
        assert dh is None
        torch.testing.assert_close(dw.double(), dw_full, rtol=1e-4, atol=1e-6)
    # the teacher never receives a gradient, even when its hidden states require one
    ht_ = ht.clone().requires_grad_(True)
    hs_ = hs.clone().requires_grad_(True)
    fused_divergence(hs_, ht_, w, labels, kind=kind, impl=impl).backward()
    assert ht_.grad is None and hs_.grad is not None


@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("kind", KINDS)
def test_top_k(kind, impl):
    hs, ht, w, labels = make_inputs(seed=14)
    up = torch.randn(10, generator=torch.Generator().manual_seed(15))
    compare(impl, hs, ht, w, labels, 1e-5, upstream=up, kind=kind, reduction="none", top_k=20, temperature=1.5)
    compare(impl, hs, ht, w, labels, 1e-5, kind=kind, reduction="mean", top_k=1)  # one token: D ≡ 0
    # top_k ≥ V is the full vocabulary
    full = run(impl, hs, ht, w, labels, kind=kind, reduction="mean")[0]
    assert torch.equal(run(impl, hs, ht, w, labels, kind=kind, reduction="mean", top_k=500)[0], full)


def test_top_k_triton_not_implemented():
    hs, ht, w, labels = make_inputs()
    with pytest.raises(NotImplementedError, match="top_k"):
        fused_divergence(hs, ht, w, labels, top_k=5, impl="triton")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_gated_divergence(kind, impl):
    """Σ m·sg(g)·D / Σ m: the SDAR full-distribution estimator; the gate gets no gradient."""
    hs, ht, w, labels = make_inputs(seed=16)
    gate = torch.rand(2, 5, generator=torch.Generator().manual_seed(17)).requires_grad_(True)
    hs_, w_ = hs.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out = gated_divergence(hs_, ht, w_, labels, gate, kind=kind, impl=impl, beta=0.4)
    out.backward()
    ref, dh, dw = ref_divergence(hs.reshape(10, 40), ht.reshape(10, 40), w, mask_of(labels), kind=kind, beta=0.4,
                                 gate=gate.detach().reshape(-1), reduction="mean")
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(hs_.grad.double().reshape(10, 40), dh, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(w_.grad.double(), dw, rtol=1e-4, atol=1e-7)
    assert gate.grad is None


def test_multi_chunk_equals_single_chunk_and_empty_input():
    hs, ht, w, labels = make_inputs(seed=18)
    for kind in KINDS:
        one = run("chunked", hs, ht, w, labels, kind=kind, chunk_bytes=2**30, upstream=None)
        many = run("chunked", hs, ht, w, labels, kind=kind, chunk_bytes=1, upstream=None)  # one row per chunk
        for a, b in zip(one, many):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for impl in IMPLS:
        e = torch.empty(0, 40)
        out = fused_divergence(e.requires_grad_(), e.clone(), w, torch.empty(0, dtype=torch.long), impl=impl)
        assert out.item() == 0.0
        out.backward()


# ----------------------------------------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_argument():
    hs, ht, w, labels = make_inputs(lead=None)
    cases = [
        (dict(weight=w[:, :30]), ValueError, "student_hidden"),
        (dict(teacher_hidden=ht[:5]), ValueError, "teacher_hidden"),
        (dict(labels_or_mask=labels[:5]), ValueError, "labels_or_mask"),
        (dict(labels_or_mask=labels.to(torch.uint8)), TypeError, "labels_or_mask"),
        (dict(weight=w.double()), TypeError, "weight"),
        (dict(teacher_hidden=ht.bfloat16()), TypeError, "dtype"),
        (dict(weight=w[0]), ValueError, "weight"),
        (dict(kind="kl"), ValueError, "kind"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(impl="cuda"), ValueError, "impl"),
        (dict(beta=1.5), ValueError, "beta"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(chunk_bytes=0), ValueError, "chunk_bytes"),
        (dict(ignore_index=1.5), TypeError, "ignore_index"),
    ]
    base = dict(student_hidden=hs, teacher_hidden=ht, weight=w, labels_or_mask=labels)
    for change, exc, word in cases:
        args = {**base, **change}
        pos = [args.pop(k) for k in ("student_hidden", "teacher_hidden", "weight", "labels_or_mask")]
        with pytest.raises(exc, match=word):
            fused_divergence(*pos, **args)
    with pytest.raises(ValueError, match="'reverse_kl'"):  # the message lists the valid names
        fused_divergence(hs, ht, w, labels, kind="kl")
    with pytest.raises(ValueError, match="gate"):
        gated_divergence(hs, ht, w, labels, torch.rand(3))


# ----------------------------------------------------------------------------------------------- property
@pytest.mark.slow
def test_property_random_shapes_agree_with_reference():
    """hypothesis: random shapes, kinds, β, τ and masks; every impl agrees with the fp64 reference."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=12, deadline=None, derandomize=True)
    @given(n=st.integers(1, 9), h=st.integers(1, 37), v=st.integers(1, 90), kind=st.sampled_from(KINDS),
           impl=st.sampled_from(IMPLS), beta=st.floats(0.05, 0.95), tau=st.floats(0.3, 3.0),
           scale=st.floats(0.1, 8.0), seed=st.integers(0, 2**16), reduction=st.sampled_from(REDUCTIONS))
    def check(n, h, v, kind, impl, beta, tau, scale, seed, reduction):
        hs, ht, w, _ = make_inputs(n=n, h=h, v=v, seed=seed, scale_s=scale, scale_t=scale, lead=None)
        mask = torch.rand(n, generator=torch.Generator().manual_seed(seed)) > 0.3
        up = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1)) if reduction == "none" else None
        compare(impl, hs, ht, w, mask, 1e-5, upstream=up, kind=kind, beta=beta, temperature=tau,
                reduction=reduction)

    check()


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype,rtol", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_triton_on_cuda(kind, dtype, rtol):
    """The compiled kernels (native 16-bit dots, atomics) at a moderate shape, against the fp64 reference."""
    hs, ht, w, labels = make_inputs(n=300, h=200, v=5003, dtype=dtype, seed=19, lead=None)
    dev = torch.device("cuda")
    hs, ht, w, labels = hs.to(dev), ht.to(dev), w.to(dev), labels.to(dev)
    up = torch.randn(300, generator=torch.Generator().manual_seed(20)).to(dev)
    ref = ref_divergence(hs.cpu(), ht.cpu(), w.cpu(), mask_of(labels.cpu()), kind=kind, reduction="none",
                         upstream=up.cpu(), beta=0.3)
    got = run("triton", hs, ht, w, labels, upstream=up, kind=kind, reduction="none", beta=0.3)
    naive = run("naive", hs, ht, w, labels, upstream=up, kind=kind, reduction="none", beta=0.3)
    for name, g, n, r in zip(("value", "dh", "dW"), got, naive, ref):
        assert_close_rule(g.cpu(), n.cpu(), r, 4 * rtol, f"triton cuda {name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_no_grad_forward_matches(impl):
    """Under torch.no_grad (evaluation) the value is the same and nothing is recorded."""
    hs, ht, w, labels = make_inputs(seed=21)
    for kind in KINDS:
        for reduction in ("mean", "none"):
            with_grad = fused_divergence(hs.clone().requires_grad_(), ht, w.clone().requires_grad_(), labels,
                                         kind=kind, reduction=reduction, impl=impl)
            with torch.no_grad():
                plain = fused_divergence(hs.clone().requires_grad_(), ht, w.clone().requires_grad_(), labels,
                                         kind=kind, reduction=reduction, impl=impl)
            assert plain.grad_fn is None and with_grad.grad_fn is not None
            torch.testing.assert_close(plain, with_grad.detach(), rtol=1e-6, atol=1e-7)
