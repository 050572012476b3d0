"""sdar_loss's full-distribution estimators ("full_reverse_kl", "full_forward_kl", "jsd") against an
fp64 reference written from the formulas: full logits in fp64, D_t by definition, the gate from the
sampled gap (detached), loss = Σ w·g·D / Σ w; gradients by fp64 autograd of that formula.
"""

from __future__ import annotations

import math

import pytest
import torch

import sdar_kernels as sk

from _kernels_common import assert_within_naive, err, make_case

IMPLS = ["naive", "chunked", "triton"]
FULL = ["full_reverse_kl", "full_forward_kl", "jsd"]


def _inputs(kind="random", seed=0, n=9, hdim=16, v=37, dtype=torch.float32):
    case = make_case(n, hdim, v, dtype, kind, seed=seed)
    g = torch.Generator().manual_seed(seed + 20)
    teacher = (case.hidden.double() + 0.6 * torch.randn(n, hdim, generator=g, dtype=torch.float64)).to(dtype)
    mask = torch.ones(n)
    mask[2], mask[4] = 0.0, 0.5
    upstream = torch.randn(n, generator=g)
    return case, teacher, mask, upstream


def reference(hs, ht, w, labels, mask, *, estimator, jsd_beta, gate, beta, temperature, reduction, upstream):
    """fp64 (loss, dh, dW) from the definitions; the gate is detached (computed without gradient)."""
    h = hs.double().clone().requires_grad_()
    wt = w.double().clone().requires_grad_()
    valid = labels != -100
    idx = torch.where(valid, labels, torch.zeros_like(labels))
    log_s = torch.log_softmax(h @ wt.T / temperature, dim=1)
    with torch.no_grad():
        log_t = torch.log_softmax(ht.double() @ w.double().T / temperature, dim=1)
        gap = (log_t - log_s).gather(1, idx[:, None])[:, 0]
        sig = torch.sigmoid(beta * gap)
        h_norm = -(log_s.exp() * log_s).sum(1) / math.log(w.shape[0])
        g = {"gap": sig, "soft_or": 1 - (1 - h_norm) * (1 - sig), "none": torch.full_like(gap, 0.5)}[gate]
    p_s, p_t = log_s.exp(), log_t.exp()
    kind = {"full_reverse_kl": "reverse", "full_forward_kl": "forward"}.get(estimator, "jsd")
    if kind == "jsd" and jsd_beta in (0.0, 1.0):  # TRL's end points
        kind = "forward" if jsd_beta == 0.0 else "reverse"
    if kind == "reverse":
        d = (p_s * (log_s - log_t)).sum(1)
    elif kind == "forward":
        d = (p_t * (log_t - log_s)).sum(1)
    else:
        log_m = torch.log(jsd_beta * p_t + (1 - jsd_beta) * p_s)
        d = jsd_beta * (p_t * (log_t - log_m)).sum(1) + (1 - jsd_beta) * (p_s * (log_s - log_m)).sum(1)
    wv = mask.double() * valid
    per_token = wv * g * d
    if reduction == "mean":
        loss = per_token.sum() / wv.sum()
        total = loss
    elif reduction == "sum":
        loss = total = per_token.sum()
    else:
        loss, total = per_token, (per_token * upstream.double()).sum()
    total.backward()
    return loss.detach(), h.grad, wt.grad


def _run(impl, hs, ht, w, labels, mask, upstream, **kw):
    h = hs.clone().requires_grad_()
    wt = w.clone().requires_grad_()
    out = sk.sdar_loss(h, ht, wt, labels, mask=mask, impl=impl, **kw)
    total = out.loss if kw.get("reduction", "mean") != "none" else (out.loss * upstream).sum()
    total.backward()
    return out, h.grad, wt.grad


def _check(impl, case, teacher, mask, upstream, dtype=torch.float32, **kw):
    ref_kw = dict(estimator=kw["estimator"], jsd_beta=kw.get("jsd_beta", 0.5), gate=kw.get("gate", "gap"),
                  beta=kw.get("beta", 5.0), temperature=case.temperature, reduction=kw.get("reduction", "mean"))
    loss_ref, dh_ref, dw_ref = reference(case.hidden, teacher, case.weight, case.labels, mask, upstream=upstream,
                                         **ref_kw)
    kw = dict(kw, temperature=case.temperature)
    got, dh, dw = _run(impl, case.hidden, teacher, case.weight, case.labels, mask, upstream, **kw)
    naive, dh_n, dw_n = _run("naive", case.hidden, teacher, case.weight, case.labels, mask, upstream, **kw)
    assert got.loss.dtype == torch.float32
    for name, x, n, ref in (("loss", got.loss.detach(), naive.loss.detach(), loss_ref), ("d_hidden", dh, dh_n, dh_ref),
                            ("d_weight", dw, dw_n, dw_ref)):
        assert_within_naive(name, x, n, ref, dtype)
        # The naive path shares sdar_loss's estimator code, so also bound the error outright (fp32).
        assert err(x, ref) <= 1e-4 * (1 + ref.abs().max().item()), f"{name}: error {err(x, ref):.3g}"
    return got


@pytest.mark.parametrize("gate", ["gap", "soft_or"])
@pytest.mark.parametrize("estimator", FULL)
@pytest.mark.parametrize("impl", IMPLS)
def test_full_estimators_match_fp64_reference(impl, estimator, gate):
    case, teacher, mask, upstream = _inputs()
    got = _check(impl, case, teacher, mask, upstream, estimator=estimator, gate=gate, jsd_beta=0.3)
    # The sampled fields are still returned, student_logp with gradient.
    assert got.student_logp.requires_grad and not got.gate.requires_grad
    assert (got.gate[case.labels == -100] == 0).all()


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("kind", ["peaked", "negative"])
@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_full_estimators_reductions_and_traps(impl, kind, reduction):
    case, teacher, mask, upstream = _inputs(kind, seed=1, v=41)
    for estimator in FULL:
        _check(impl, case, teacher, mask, upstream, estimator=estimator, reduction=reduction)


@pytest.mark.parametrize("jsd_beta", [0.0, 0.9, 1.0])
def test_jsd_beta_and_its_end_points(jsd_beta):
    case, teacher, mask, upstream = _inputs(seed=2)
    got = _check("chunked", case, teacher, mask, upstream, estimator="jsd", jsd_beta=jsd_beta)
    if jsd_beta in (0.0, 1.0):
        same = "full_forward_kl" if jsd_beta == 0.0 else "full_reverse_kl"
        other = sk.sdar_loss(case.hidden, teacher, case.weight, case.labels, mask=mask, estimator=same,
                             temperature=case.temperature, impl="chunked")
        assert got.loss.item() == pytest.approx(other.loss.item(), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("estimator", FULL)
@pytest.mark.parametrize("impl", IMPLS)
def test_teacher_equal_student_gives_zero_loss_and_gradient(impl, estimator):
    case, _, mask, _ = _inputs(seed=3)
    h = case.hidden.clone().requires_grad_()
    w = case.weight.clone().requires_grad_()
    out = sk.sdar_loss(h, case.hidden, w, case.labels, mask=mask, estimator=estimator, impl=impl)
    out.loss.backward()
    assert abs(out.loss.item()) <= 1e-6
    assert h.grad.abs().max().item() <= 1e-6 and w.grad.abs().max().item() <= 1e-6


def test_grpo_passes_the_estimator_through():
    case, teacher, mask, _ = _inputs(seed=4)
    labels, hs, ht = case.labels.view(3, 3), case.hidden.view(3, 3, -1), teacher.view(3, 3, -1)
    for estimator in FULL:
        h1 = hs.clone().requires_grad_()
        loss, metrics = sk.grpo_sdar_loss(h1, ht, case.weight, labels, torch.zeros(3), mask=mask.view(3, 3),
                                          pg_coef=0.0, sdar_coef=0.7, sdar_estimator=estimator, jsd_beta=0.4,
                                          temperature=case.temperature, impl="chunked")
        loss.backward()
        h2 = hs.clone().requires_grad_()
        out = sk.sdar_loss(h2, ht, case.weight, labels, mask=mask.view(3, 3), estimator=estimator, jsd_beta=0.4,
                           temperature=case.temperature, impl="chunked")
        (0.7 * out.loss).backward()
        assert loss.item() == pytest.approx(0.7 * out.loss.item(), rel=1e-5)
        assert metrics["sdar_loss"].item() == pytest.approx(out.loss.item(), rel=1e-5)
        assert metrics["gate_mean"].item() > 0
        torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-7)


def test_unknown_estimator_lists_all():
    case, teacher, _, _ = _inputs()
    with pytest.raises(ValueError) as info:
        sk.sdar_loss(case.hidden, teacher, case.weight, case.labels, estimator="kl")
    for name in sk.ESTIMATORS:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="sdar_estimator"):
        sk.grpo_sdar_loss(case.hidden, teacher, case.weight, case.labels, torch.zeros(9), sdar_estimator="kl")
    assert set(FULL) <= set(sk.ESTIMATORS) and set(FULL) == set(sk.FULL_ESTIMATORS)
    sk.SDARLoss(estimator="jsd", jsd_beta=0.2)  # accepted by the module too


def test_per_token_loss_refuses_full_distribution_estimators():
    # The full-distribution estimators need hidden states; the per-token pure function must not silently
    # fall back to the sampled formula for them.
    from sdar_kernels import losses

    logp = torch.tensor([-1.0, -2.0])
    with pytest.raises(ValueError, match="estimator"):
        losses.sdar_token_loss(logp, logp - 0.5, gate=torch.full_like(logp, 0.5), estimator="full_reverse_kl")
