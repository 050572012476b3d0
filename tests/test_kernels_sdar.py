"""sdar_loss against the fp64 hand-derived reference; traps; modules; bad input."""

from __future__ import annotations

import math

import pytest
import torch

import sdar_kernels as sk

from _kernels_common import assert_within_naive, err, make_case, truth

ALL_IMPLS = ["naive", "chunked", "triton"]


def sdar_truth(hs, ht, w, labels, weights, *, gate, beta, estimator, reduction, temperature, upstream, extra):
    """fp64 loss, per-token fields and (dh, dW) by hand. weights: float token weights (mask);
    upstream: per-token grad of loss for reduction="none"; extra: per-token grad put on student_logp."""
    valid = (labels != -100) & (weights != 0)
    _, ls, ent, _, _ = truth(hs, w, labels, valid, temperature)
    _, lt, _, _, _ = truth(ht, w, labels, valid, temperature)
    gap = lt - ls
    v = w.shape[0]
    sig = 1 / (1 + torch.exp(-beta * gap))
    h_norm = ent / (math.log(v) if v > 1 else 1.0)
    g = {"gap": sig, "entropy": h_norm, "soft_or": 1 - (1 - h_norm) * (1 - sig),
         "none": torch.full_like(gap, 0.5)}[gate]
    per_token = g * (lt - ls) if estimator == "sdar" else -g * gap * ls
    d_per_token = -g if estimator == "sdar" else -g * gap  # ∂ℓ/∂logp_S
    wv = weights.double() * valid
    total = wv.sum()
    denom = total if total > 0 else torch.ones(()).double()
    if reduction == "mean":
        loss, a = (wv * per_token).sum() / denom, d_per_token * wv / denom
    elif reduction == "sum":
        loss, a = (wv * per_token).sum(), d_per_token * wv
    else:
        loss, a = wv * per_token, d_per_token * wv * upstream.double()
    a = a + extra.double() * valid
    _, _, _, dh, dw = truth(hs, w, labels, valid, temperature, a)
    zero = torch.zeros(()).double()
    fields = dict(student_logp=ls, teacher_logp=lt, gap=torch.where(valid, gap, zero),
                  gate=torch.where(valid, g, zero), student_entropy=ent)
    return loss, fields, dh, dw


def _sdar_run(impl, hs, ht, w, labels, mask, upstream, extra, **kw):
    h = hs.clone().requires_grad_()
    wt = w.clone().requires_grad_()
    out = sk.sdar_loss(h, ht, wt, labels, mask=mask, impl=impl, **kw)
    total = out.loss if kw["reduction"] != "none" else (out.loss * upstream).sum()
    (total + (out.student_logp * extra).sum()).backward()
    return out, h.grad, wt.grad


def _inputs(dtype, seed=0, n=9, hdim=20, v=37):
    case = make_case(n, hdim, v, dtype, "random", seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    # Teacher = student + a perturbation, so gaps of both signs and moderate size occur.
    teacher = (case.hidden.double() + 0.7 * torch.randn(n, hdim, generator=g, dtype=torch.float64)).to(dtype)
    mask = torch.ones(n)
    mask[2] = 0.0
    mask[4] = 0.5  # float masks weight tokens
    upstream, extra = torch.randn(n, generator=g), torch.randn(n, generator=g)
    return case, teacher, mask, upstream, extra


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("estimator", ["sdar", "reverse_kl"])
@pytest.mark.parametrize("gate", ["gap", "entropy", "soft_or", "none"])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_sdar_loss_matches_fp64_truth(impl, gate, estimator, dtype, reduction):
    case, teacher, mask, upstream, extra = _inputs(dtype)
    kw = dict(gate=gate, beta=5.0, estimator=estimator, reduction=reduction, temperature=1.3)
    loss_ref, fields_ref, dh_ref, dw_ref = sdar_truth(
        case.hidden, teacher, case.weight, case.labels, mask, upstream=upstream, extra=extra, **kw)
    got, dh, dw = _sdar_run(impl, case.hidden, teacher, case.weight, case.labels, mask, upstream, extra, **kw)
    naive, dh_n, dw_n = _sdar_run("naive", case.hidden, teacher, case.weight, case.labels, mask, upstream, extra, **kw)
    assert_within_naive("loss", got.loss.detach(), naive.loss.detach(), loss_ref, dtype)
    for name, ref in fields_ref.items():
        x = getattr(got, name)
        assert x.dtype == torch.float32
        if name != "student_logp":
            assert not x.requires_grad, f"{name} must be detached"
        assert_within_naive(name, x.detach(), getattr(naive, name).detach(), ref, dtype)
    assert got.student_logp.requires_grad
    assert_within_naive("d_hidden", dh, dh_n, dh_ref, dtype)
    assert_within_naive("d_weight", dw, dw_n, dw_ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_teacher_equal_student_gives_zero_gap_and_half_gate(impl, dtype):
    case = make_case(13, 20, 257, dtype, "random", seed=3)
    h = case.hidden.clone().requires_grad_()
    out = sk.sdar_loss(h, case.hidden, case.weight, case.labels, gate="gap", impl=impl)
    valid = case.labels != -100
    assert (out.gap == 0).all()
    assert (out.gate[valid] == 0.5).all()
    assert (out.teacher_logp == out.student_logp.detach()).all()
    assert out.loss.item() == 0.0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_fully_masked_batch_is_zero_without_nan(impl, reduction):
    case, teacher, _, _, _ = _inputs(torch.float32, seed=4)
    h = case.hidden.clone().requires_grad_()
    w = case.weight.clone().requires_grad_()
    out = sk.sdar_loss(h, teacher, w, case.labels, mask=torch.zeros(9, dtype=torch.bool), impl=impl,
                       reduction=reduction)
    out.loss.sum().backward()
    assert (out.loss == 0).all() and (h.grad == 0).all() and (w.grad == 0).all()
    for name in ("student_logp", "teacher_logp", "gap", "gate", "student_entropy"):
        assert (getattr(out, name) == 0).all(), name


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_empty_input_gives_zero_loss(impl):
    w = torch.randn(11, 8, requires_grad=True)
    h = torch.randn(0, 8, requires_grad=True)
    out = sk.sdar_loss(h, torch.randn(0, 8), w, torch.zeros(0, dtype=torch.long), impl=impl)
    out.loss.backward()
    assert out.loss.item() == 0.0 and (w.grad == 0).all()


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_teacher_gets_no_gradient_and_shapes_are_kept(impl):
    case, teacher, mask, _, _ = _inputs(torch.float32, seed=5, n=12)
    hs = case.hidden.reshape(3, 4, 20).clone().requires_grad_()
    ht = teacher.reshape(3, 4, 20).clone().requires_grad_()
    out = sk.sdar_loss(hs, ht, case.weight, case.labels.reshape(3, 4), mask=mask[:12].reshape(3, 4), impl=impl)
    out.loss.backward()
    assert ht.grad is None and hs.grad is not None
    assert out.student_logp.shape == (3, 4) and out.gate.shape == (3, 4)


def test_module_matches_function():
    case, teacher, mask, _, _ = _inputs(torch.float32, seed=6)
    module = sk.SDARLoss(gate="soft_or", beta=3.0, estimator="reverse_kl", impl="chunked")
    a = module(case.hidden, teacher, case.weight, case.labels, mask=mask)
    b = sk.sdar_loss(case.hidden, teacher, case.weight, case.labels, mask=mask, gate="soft_or", beta=3.0,
                     estimator="reverse_kl", impl="chunked")
    assert torch.equal(a.loss, b.loss) and torch.equal(a.gate, b.gate)
    assert "soft_or" in repr(module)
    with pytest.raises(ValueError, match="gate"):
        sk.SDARLoss(gate="sigmoid")


def _good():
    case, teacher, mask, _, _ = _inputs(torch.float32, seed=7)
    return dict(student_hidden=case.hidden, teacher_hidden=teacher, weight=case.weight, labels=case.labels)


@pytest.mark.parametrize("change, error, match", [
    (lambda d: d.update(weight=torch.randn(37, 21)), ValueError, "H"),
    (lambda d: d.update(teacher_hidden=d["teacher_hidden"][:5]), ValueError, "teacher_hidden"),
    (lambda d: d.update(labels=d["labels"][:5]), ValueError, "labels"),
    (lambda d: d.update(labels=d["labels"].int()), TypeError, "labels"),
    (lambda d: d.update(labels=d["labels"].float()), TypeError, "labels"),
    (lambda d: d["labels"].__setitem__(0, 37), ValueError, "labels"),
    (lambda d: d["labels"].__setitem__(0, -1), ValueError, "labels"),
    (lambda d: d.update(mask=torch.ones(4)), ValueError, "mask"),
    (lambda d: d.update(student_hidden=d["student_hidden"].double()), TypeError, "dtype"),
    (lambda d: d.update(teacher_hidden=d["teacher_hidden"].bfloat16()), TypeError, "teacher_hidden"),
    (lambda d: d.update(impl="cuda"), ValueError, "'auto', 'triton', 'chunked', 'naive'"),
    (lambda d: d.update(gate="sigmoid"), ValueError, "'gap', 'entropy', 'soft_or', 'none'"),
    (lambda d: d.update(estimator="forward_kl"), ValueError, "estimator"),
    (lambda d: d.update(reduction="avg"), ValueError, "reduction"),
    (lambda d: d.update(temperature=0.0), ValueError, "temperature"),
    (lambda d: d.update(temperature=-1.0), ValueError, "temperature"),
])
def test_bad_input_is_a_clear_error(change, error, match):
    kwargs = _good()
    change(kwargs)
    with pytest.raises(error, match=match):
        sk.sdar_loss(**kwargs)


def test_fused_logprobs_bad_input():
    h, w, y = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 2, -100, 9])
    sk.fused_logprobs(h, w, y)  # fine: -100 is ignore_index
    with pytest.raises(ValueError, match="labels"):
        sk.fused_logprobs(h, w, torch.tensor([1, 2, 10, 3]))
    with pytest.raises(ValueError, match="weight"):
        sk.fused_logprobs(h, w[None], y)
    with pytest.raises(TypeError, match="hidden"):
        sk.fused_logprobs(h.long(), w, y)
    with pytest.raises(ValueError, match="chunk_bytes"):
        sk.fused_logprobs(h, w, y, chunk_bytes=0)
    assert err(sk.fused_logprobs(h, w, y, ignore_index=-100)[0][2:3], torch.zeros(1)) == 0
