"""impl="forward_grad" (the gradient formed in the forward, token chunk by token chunk).

grpo_sdar_loss runs it through every test of test_kernels_grpo.py (its ALL_IMPLS); here: sdar_loss
against the fp64 hand-derived reference, the shapes and gradient requests the chunk loop must get
right, what it refuses, and on CUDA the torch.compile'd epilogues in bf16.
"""

from __future__ import annotations

import pytest
import torch

import sdar_kernels as sk
from sdar_kernels.forward_grad import chunk_rows

from _kernels_common import SHAPES, assert_within_naive, err, make_case
from test_kernels_sdar import _inputs, sdar_truth


def _rows_budget(v: int, rows: int) -> int:
    """chunk_bytes giving chunks of ``rows`` rows over a V-column head."""
    return rows * 4 * v


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("estimator", ["sdar", "reverse_kl"])
@pytest.mark.parametrize("gate", ["gap", "entropy", "soft_or", "none"])
def test_sdar_loss_matches_fp64_truth(gate, estimator, dtype, reduction):
    case, teacher, mask, _, _ = _inputs(dtype)  # 9 rows, V 37, at most 4 rows a chunk: 3 chunks of 3
    kw = dict(gate=gate, beta=5.0, estimator=estimator, reduction=reduction, temperature=1.3)
    upstream = 2.5  # backward of 2.5·loss: the stored gradients are scaled, not reused as they are
    loss_ref, fields_ref, dh_ref, dw_ref = sdar_truth(case.hidden, teacher, case.weight, case.labels, mask,
                                                      upstream=None, extra=torch.zeros(9), **kw)
    results = {}
    for impl, extra in (("forward_grad", dict(chunk_bytes=_rows_budget(37, 4))), ("naive", {})):
        h = case.hidden.clone().requires_grad_()
        w = case.weight.clone().requires_grad_()
        out = sk.sdar_loss(h, teacher, w, case.labels, mask=mask, impl=impl, **kw, **extra)
        (upstream * out.loss).backward()
        results[impl] = (out, h.grad, w.grad)
    (got, dh, dw), (naive, dh_n, dw_n) = results["forward_grad"], results["naive"]
    assert_within_naive("loss", got.loss.detach(), naive.loss.detach(), loss_ref, dtype)
    for name, ref in fields_ref.items():
        x = getattr(got, name)
        assert x.dtype == torch.float32 and not x.requires_grad, name  # student_logp too: the loss holds the grad
        assert_within_naive(name, x, getattr(naive, name).detach(), ref, dtype)
    assert_within_naive("d_hidden", dh, dh_n, upstream * dh_ref, dtype)
    assert_within_naive("d_weight", dw, dw_n, upstream * dw_ref, dtype)


@pytest.mark.parametrize("n, hdim, v", SHAPES)
@pytest.mark.parametrize("rows", [1, 3, 64])
def test_chunk_sizes_and_vocabularies(n, hdim, v, rows):
    """V = 1 and odd sizes; one-row chunks, chunks that do not divide N, one chunk for everything."""
    case = make_case(n, hdim, v, torch.float32, "peaked", seed=n + v)
    teacher = case.hidden.flip(0).contiguous()
    results = []
    for impl, extra in (("forward_grad", dict(chunk_bytes=_rows_budget(v, rows))), ("naive", {})):
        h = case.hidden.clone().requires_grad_()
        w = case.weight.clone().requires_grad_()
        out = sk.sdar_loss(h, teacher, w, case.labels, gate="soft_or", temperature=0.9, impl=impl, **extra)
        out.loss.backward()
        results.append((out.loss.detach(), h.grad, w.grad))
    for got, ref in zip(*results):
        assert err(got, ref) <= 1e-5 * (1 + ref.abs().max().item())


def test_chunk_rows():
    assert chunk_rows(14, 1000, 4000 * 7 + 3) == 7  # at most 7 rows: 2 chunks of 7
    assert chunk_rows(15, 1000, 4000 * 7 + 3) == 5  # 3 chunks of 5, not 7 + 7 + 1
    assert chunk_rows(8192, 151_936, 2 * 2**30) == 2731  # ≤ 3533 rows: 3 × 2731
    assert chunk_rows(5, 10**9, 1) == 1 and chunk_rows(0, 10, 10**6) == 1


@pytest.mark.parametrize("need", ["hidden", "weight", "none"])
def test_partial_requires_grad_and_no_grad(need):
    """A frozen head (LoRA) skips dW, a frozen input skips dh; no_grad computes the values only."""
    case, teacher, mask, _, _ = _inputs(torch.float32, seed=2)
    h = case.hidden.clone().requires_grad_(need == "hidden")
    w = case.weight.clone().requires_grad_(need == "weight")
    kw = dict(mask=mask, gate="gap", chunk_bytes=_rows_budget(37, 2))
    ref_h = case.hidden.clone().requires_grad_()
    ref_w = case.weight.clone().requires_grad_()
    ref = sk.sdar_loss(ref_h, teacher, ref_w, case.labels, impl="naive", **kw)
    ref.loss.backward()
    out = sk.sdar_loss(h, teacher, w, case.labels, impl="forward_grad", **kw)
    assert err(out.loss.detach(), ref.loss.detach()) < 1e-6
    if need == "none":
        assert not out.loss.requires_grad
        return
    out.loss.backward()
    assert (h.grad is None) == (need != "hidden") and (w.grad is None) == (need != "weight")
    got, expected = (h.grad, ref_h.grad) if need == "hidden" else (w.grad, ref_w.grad)
    assert err(got, expected) <= 1e-5 * (1 + expected.abs().max().item())
    with torch.no_grad():
        quiet = sk.sdar_loss(case.hidden.clone().requires_grad_(), teacher, w, case.labels, impl="forward_grad", **kw)
    assert not quiet.loss.requires_grad and err(quiet.loss, ref.loss.detach()) < 1e-6


def test_fully_masked_and_empty_inputs():
    case, teacher, _, _, _ = _inputs(torch.float32, seed=4)
    h = case.hidden.clone().requires_grad_()
    w = case.weight.clone().requires_grad_()
    out = sk.sdar_loss(h, teacher, w, case.labels, mask=torch.zeros(9, dtype=torch.bool), impl="forward_grad")
    out.loss.backward()
    assert out.loss.item() == 0.0 and (h.grad == 0).all() and (w.grad == 0).all()
    w = torch.randn(11, 8, requires_grad=True)
    empty = sk.sdar_loss(torch.randn(0, 8, requires_grad=True), torch.randn(0, 8), w,
                         torch.zeros(0, dtype=torch.long), impl="forward_grad")
    empty.loss.backward()
    assert empty.loss.item() == 0.0 and (w.grad == 0).all()


def test_fused_logprobs_runs_auto():
    """Log-probs alone have no loss to form a gradient for: forward_grad runs "auto" (same values, grads)."""
    case = make_case(13, 20, 257, torch.float32, "random", seed=1)
    upstream = torch.randn(13)
    grads = []
    for impl in ("forward_grad", "auto"):
        h = case.hidden.clone().requires_grad_()
        logp, ent = sk.fused_logprobs(h, case.weight, case.labels, impl=impl, return_entropy=True)
        (logp * upstream + ent).sum().backward()
        grads.append((logp.detach(), ent.detach(), h.grad))
    for got, ref in zip(*grads):
        assert torch.equal(got, ref)


def test_refusals_name_the_argument():
    case, teacher, _, _, _ = _inputs(torch.float32)
    args = (case.hidden, teacher, case.weight, case.labels)
    with pytest.raises(ValueError, match="reduction='mean' or 'sum'"):
        sk.sdar_loss(*args, reduction="none", impl="forward_grad")
    for estimator in sk.FULL_ESTIMATORS:
        with pytest.raises(ValueError, match="sampled-token estimators"):
            sk.sdar_loss(*args, estimator=estimator, impl="forward_grad")
    adv = torch.randn(9)
    with pytest.raises(ValueError, match="sampled-token estimators"):
        sk.grpo_sdar_loss(case.hidden, teacher, case.weight, case.labels, adv, sdar_estimator="jsd",
                          impl="forward_grad")
    with pytest.raises(ValueError, match="full-distribution divergences"):
        sk.fused_divergence(case.hidden, teacher, case.weight, case.labels, impl="forward_grad")
    with pytest.raises(ValueError, match="impl="):
        sk.sdar_loss(*args, impl="forward")


def test_train_config_accepts_forward_grad_with_sampled_estimators():
    from sdar.config import Config
    assert Config(impl="forward_grad").impl == "forward_grad"
    with pytest.raises(ValueError, match="impl: 'forward_grad'"):
        Config(impl="forward_grad", distill_loss="full_reverse_kl")


@pytest.mark.requires_cuda
def test_cuda_compiled_epilogues_bf16():
    """On CUDA the epilogues are torch.compile'd; two batch sizes (the last chunk's size changes) and
    bf16 inputs, against the naive path in bf16 and an fp64 reference from the same rounded inputs."""
    dev = torch.device("cuda")
    for n in (1000, 1537):
        case = make_case(n, 256, 5003, torch.bfloat16, "random", seed=n)
        hs, w, y = case.hidden.to(dev), case.weight.to(dev), case.labels.to(dev)
        ht = (hs.float() + 0.5 * torch.randn_like(hs, dtype=torch.float32)).to(torch.bfloat16)
        adv = torch.randn(n, device=dev)
        results = {}
        for impl, extra in (("forward_grad", dict(chunk_bytes=_rows_budget(5003, 384))), ("naive", {})):
            h = hs.clone().requires_grad_()
            wt = w.clone().requires_grad_()
            loss, _ = sk.grpo_sdar_loss(h, ht, wt, y, adv, kl_coef=0.0, entropy_coef=0.01, sdar_coef=0.5,
                                        impl=impl, **extra)
            loss.backward()
            results[impl] = (loss.detach().cpu(), h.grad.cpu(), wt.grad.cpu())
        h64 = hs.double().requires_grad_()
        w64 = w.double().requires_grad_()
        ref, _ = sk.grpo_sdar_loss(h64, ht.double(), w64, y, adv.double(), entropy_coef=0.01, sdar_coef=0.5,
                                   impl="naive")
        ref.backward()
        for name, got, naive, truth in zip(("loss", "d_hidden", "d_weight"), results["forward_grad"],
                                           results["naive"], (ref.detach(), h64.grad, w64.grad)):
            assert_within_naive(name, got, naive, truth.cpu(), torch.bfloat16)
