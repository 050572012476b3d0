"""The forward-gradient prototype of benchmarks/gpu/bench_gpu.py against an fp64 reference of the published loss.

The prototype forms the loss's gradient in its forward pass (dz = gate/N·(p − onehot) per token chunk); the
reference differentiates mean(σ(β·Δ)·Δ) with Δ = logp_T − logp_S (gate and teacher detached) by autograd in fp64.
"""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "bench_gpu.py"
_SPEC = importlib.util.spec_from_file_location("bench_gpu", _PATH)
bench_gpu = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_gpu)


def _reference(hs, ht, w, y, beta):
    hs, w = hs.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    logp_s = torch.log_softmax(hs @ w.T, dim=-1).gather(1, y[:, None])[:, 0]
    with torch.no_grad():
        logp_t = torch.log_softmax(ht.double() @ w.T, dim=-1).gather(1, y[:, None])[:, 0]
    gap = logp_t - logp_s
    loss = (torch.sigmoid(beta * gap.detach()) * gap).mean()
    loss.backward()
    return loss.detach(), hs.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 7, 64, 100])
def test_forward_gradient_prototype_matches_fp64(chunk):
    g = torch.Generator().manual_seed(chunk)
    n, h, v, beta = 64, 24, 301, 5.0
    w = torch.randn(v, h, generator=g) / math.sqrt(h)
    hs = (3.0 * torch.randn(n, h, generator=g)).requires_grad_()
    ht = hs.detach() + torch.randn(n, h, generator=g)
    y = torch.randint(0, v, (n,), generator=g)
    w.requires_grad_()
    upstream = 0.7
    loss = bench_gpu._ForwardGrad.apply(hs, ht, w, y, chunk, beta, bench_gpu._sdar_epilogue)
    (upstream * loss).backward()
    ref_loss, ref_dh, ref_dw = _reference(hs, ht, w, y, beta)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(hs.grad.double(), upstream * ref_dh, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(w.grad.double(), upstream * ref_dw, rtol=1e-4, atol=1e-7)
