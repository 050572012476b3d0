"""fused_logprobs and the backends against the fp64 hand-derived reference."""

from __future__ import annotations

import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

import sdar_kernels as sk
from sdar_kernels import chunked, compile as ops
from sdar_kernels.stats import combine_stats, merge_stats

from _kernels_common import (CPU_ONLY_SHAPES, IMPLS, KINDS, SHAPES, Case, assert_within_naive, err,
                             make_case, narrow_tiles, small_chunk, tile_chunk, truth)


def _run(impl, case, a, b, *, chunk_bytes=None):
    """logp, entropy, dh, dW of one impl with upstream gradients a (logp) and b (entropy)."""
    h = case.hidden.clone().requires_grad_()
    w = case.weight.clone().requires_grad_()
    logp, ent = sk.fused_logprobs(h, w, case.labels, temperature=case.temperature, return_entropy=True,
                                  impl=impl, chunk_bytes=chunk_bytes)
    ((logp * a).sum() + (ent * b).sum()).backward()
    return logp.detach(), ent.detach(), h.grad, w.grad


def _check_against_truth(impl, case, dtype, seed=0, chunk_bytes=None):
    n = case.labels.shape[0]
    g = torch.Generator().manual_seed(seed + 1)
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)  # per-token upstream gradients
    valid = case.labels != -100
    _, logp_ref, ent_ref, dh_ref, dw_ref = truth(case.hidden, case.weight, case.labels, valid, case.temperature, a, b)
    naive = _run("naive", case, a, b)
    got = _run(impl, case, a, b, chunk_bytes=chunk_bytes)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert got[2].dtype == dtype and got[3].dtype == dtype
    # A recomputing backward forms p from logits recomputed by another kernel than the forward's: the terms of
    # dz carry rounding of the size of |a| |z| eps, whatever their sum; scale the gradient bound by |a| |h| / T
    # and |a| |W| / T (the size of the products summed into dW and dh).
    up = max(a.abs().max().item(), b.abs().max().item())
    mag_dh = up * case.weight.double().abs().max().item() / case.temperature
    mag_dw = up * case.hidden.double().abs().max().item() / case.temperature
    for name, x, x_naive, ref, mag in zip(("logp", "entropy", "d_hidden", "d_weight"), got, naive,
                                          (logp_ref, ent_ref, dh_ref, dw_ref), (0.0, 0.0, mag_dh, mag_dw)):
        assert_within_naive(f"{impl} {name}", x, x_naive, ref, dtype, magnitude=mag)
    assert (got[0][~valid] == 0).all() and (got[1][~valid] == 0).all()
    assert (got[2][~valid] == 0).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", IMPLS)
def test_fused_logprobs_matches_fp64_truth(impl, shape, dtype, kind, monkeypatch):
    case = make_case(*shape, dtype, kind)
    if impl != "chunked":
        _check_against_truth(impl, case, dtype)
        return
    _check_against_truth(impl, case, dtype, chunk_bytes=small_chunk(shape[2]))  # row blocks
    narrow_tiles(monkeypatch)
    _check_against_truth(impl, case, dtype, chunk_bytes=tile_chunk(shape[0], shape[2]))  # vocabulary tiles


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", CPU_ONLY_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_chunked_larger_vocab(shape, dtype, kind, monkeypatch):
    case = make_case(*shape, dtype, kind)
    _check_against_truth("chunked", case, dtype, chunk_bytes=small_chunk(shape[2]))
    narrow_tiles(monkeypatch)
    _check_against_truth("chunked", case, dtype, chunk_bytes=tile_chunk(shape[0], shape[2]))


def test_naive_path_is_close_in_fp32():
    """The naive path itself (the public "naive" impl) against the fp64 truth, absolute bound."""
    case = make_case(13, 20, 257, torch.float32, "random")
    n = 13
    a, b = torch.randn(n), torch.randn(n)
    valid = case.labels != -100
    _, logp_ref, ent_ref, dh_ref, dw_ref = truth(case.hidden, case.weight, case.labels, valid, 1.0, a, b)
    got = _run("naive", case, a, b)
    for x, ref in zip(got, (logp_ref, ent_ref, dh_ref, dw_ref)):
        assert err(x, ref) < 1e-4


def test_hand_gradient_equals_fp64_autograd():
    """The reference's hand-derived dz agrees with autograd of an fp64 log_softmax (second check)."""
    case = make_case(9, 14, 31, torch.float64, "random", seed=3)
    a, b = torch.randn(9, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    valid = case.labels != -100
    _, logp, ent, dh, dw = truth(case.hidden, case.weight, case.labels, valid, 0.7, a, b)
    h = case.hidden.clone().requires_grad_()
    w = case.weight.clone().requires_grad_()
    log_p = torch.log_softmax(h @ w.T / 0.7, dim=1)
    lp = log_p.gather(1, case.labels.clamp_min(0)[:, None])[:, 0] * valid
    en = -(log_p.exp() * log_p).sum(1) * valid
    ((lp * a).sum() + (en * b).sum()).backward()
    torch.testing.assert_close(lp.detach(), logp)
    torch.testing.assert_close(en.detach(), ent)
    torch.testing.assert_close(h.grad, dh)
    torch.testing.assert_close(w.grad, dw)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", ["logp_only", "entropy_only"])
def test_single_upstream_output(impl, which):
    """Only one of the two outputs is used; the other's gradient is absent (None), not garbage."""
    case = make_case(11, 20, 53, torch.float32, "random", seed=5)
    a = torch.randn(11) if which == "logp_only" else torch.zeros(11)
    b = torch.randn(11) if which == "entropy_only" else torch.zeros(11)
    valid = case.labels != -100
    _, _, _, dh_ref, dw_ref = truth(case.hidden, case.weight, case.labels, valid, 1.0, a, b)
    h = case.hidden.clone().requires_grad_()
    w = case.weight.clone().requires_grad_()
    logp, ent = sk.fused_logprobs(h, w, case.labels, return_entropy=True, impl=impl)
    ((logp * a).sum() if which == "logp_only" else (ent * b).sum()).backward()
    assert err(h.grad, dh_ref) < 1e-4 and err(w.grad, dw_ref) < 1e-4


@pytest.mark.parametrize("impl", ["naive", "chunked", "triton"])
@pytest.mark.parametrize("frozen", ["weight", "hidden"])
def test_partial_requires_grad(impl, frozen, monkeypatch):
    """A frozen head gets no .grad and no dW is computed (the backend is told so)."""
    case = make_case(7, 20, 37, torch.float32, "random", seed=2)
    a = torch.randn(7)
    valid = case.labels != -100
    _, _, _, dh_ref, dw_ref = truth(case.hidden, case.weight, case.labels, valid, 1.0, a)
    calls = []
    if impl != "naive":
        backend = ops.backend_for(impl)
        original = backend.grad

        def spy(*args, **kwargs):
            calls.append((kwargs["need_hidden_grad"], kwargs["need_weight_grad"]))
            return original(*args, **kwargs)
        monkeypatch.setattr(backend, "grad", spy)
    h = case.hidden.clone().requires_grad_(frozen != "hidden")
    w = case.weight.clone().requires_grad_(frozen != "weight")
    logp, _ = sk.fused_logprobs(h, w, case.labels, impl=impl)
    (logp * a).sum().backward()
    if frozen == "weight":
        assert w.grad is None and err(h.grad, dh_ref) < 1e-4
    else:
        assert h.grad is None and err(w.grad, dw_ref) < 1e-4
    if impl != "naive":
        assert calls == [(frozen != "hidden", frozen != "weight")]


def test_vocab_split_merges_to_the_whole():
    """Two vocabulary shards (vocab_start) merged with merge_stats equal the unsplit statistics,
    and the sharded backward gives the shards of dW and the summands of dh."""
    case = make_case(10, 16, 41, torch.float32, "random", seed=7)
    valid = case.labels != -100
    y = torch.where(valid, case.labels, -1)
    parts = [chunked.row_stats([case.hidden], case.weight[:20], [y], temperature=0.9, vocab_start=0),
             chunked.row_stats([case.hidden], case.weight[20:], [y], temperature=0.9, vocab_start=20)]
    lse, logp, ent = combine_stats(*merge_stats(parts), valid)
    _, logp_ref, ent_ref, _, _ = truth(case.hidden, case.weight, case.labels, valid, 0.9)
    assert err(logp, logp_ref) < 1e-5 and err(ent, ent_ref) < 1e-5
    a, b = torch.randn(10) * valid, torch.randn(10) * valid
    _, _, _, dh_ref, dw_ref = truth(case.hidden, case.weight, case.labels, valid, 0.9, a, b)
    g0 = chunked.grad(case.hidden, case.weight[:20], y, lse, ent, a, b, temperature=0.9, vocab_start=0)
    g1 = chunked.grad(case.hidden, case.weight[20:], y, lse, ent, a, b, temperature=0.9, vocab_start=20)
    assert err(g0[0] + g1[0], dh_ref) < 1e-5
    assert err(torch.cat([g0[1], g1[1]]), dw_ref) < 1e-5


@pytest.mark.parametrize("impl", ["naive", "chunked", "triton"])
def test_empty_and_all_ignored(impl):
    w = torch.randn(13, 8, requires_grad=True)
    h = torch.randn(0, 8, requires_grad=True)
    logp, ent = sk.fused_logprobs(h, w, torch.zeros(0, dtype=torch.long), return_entropy=True, impl=impl)
    assert logp.shape == (0,) and ent.shape == (0,)
    h = torch.randn(4, 8, requires_grad=True)
    logp, ent = sk.fused_logprobs(h, w, torch.full((4,), -100), return_entropy=True, impl=impl)
    (logp.sum() + ent.sum()).backward()
    assert (logp == 0).all() and (ent == 0).all() and (h.grad == 0).all() and (w.grad == 0).all()


def test_batched_shape_and_auto():
    case = make_case(12, 20, 37, torch.float32, "random", seed=4)
    h, y = case.hidden.reshape(3, 4, 20), case.labels.reshape(3, 4)
    logp, ent = sk.fused_logprobs(h, case.weight, y, impl="auto")
    assert logp.shape == (3, 4) and ent is None
    assert sk.resolve_impl("auto", torch.device("cpu")) == "chunked"
    assert sk.resolve_impl("auto", torch.device("cuda")) == "triton"
    ref = sk.fused_logprobs(case.hidden, case.weight, case.labels, impl="naive")[0]
    assert err(logp.reshape(-1), ref) < 1e-5


def test_missing_triton_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sdar_kernels.ops.triton_logprobs", None)
    with pytest.raises(ImportError, match="impl='triton'"):
        ops.backend_for("triton")


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_compiled_step_has_no_graph_break(impl):
    """The backend calls are custom ops with fake impls: fullgraph compile works (aot_eager)."""
    case = make_case(6, 16, 29, torch.float32, "random", seed=8)
    torch._dynamo.reset()

    def step(h, w):
        logp, ent = sk.fused_logprobs(h, w, case.labels, return_entropy=True, impl=impl)
        return (logp * torch.arange(6.0)).sum() + ent.sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    outs = []
    for fn in (compiled, step):
        h = case.hidden.clone().requires_grad_()
        w = case.weight.clone().requires_grad_()
        loss = fn(h, w)
        loss.backward()
        outs.append((loss.detach(), h.grad, w.grad))
    for x, y in zip(*outs):
        torch.testing.assert_close(x, y)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), h=st.integers(1, 24), v=st.integers(1, 70), temp=st.floats(0.3, 3.0),
       scale=st.floats(0.1, 8.0), seed=st.integers(0, 2**16), rows=st.integers(1, 8), tile=st.integers(1, 9))
def test_property_cpu_impls_agree_with_truth(n, h, v, temp, scale, seed, rows, tile):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g) * scale
    weight = torch.randn(v, h, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.2] = -100
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    valid = labels != -100
    _, logp_ref, ent_ref, dh_ref, dw_ref = truth(hidden, weight, labels, valid, temp, a, b)
    case = Case(hidden, weight, labels, temp)
    naive = _run("naive", case, a, b)
    old_min_tile = chunked._MIN_TILE
    chunked._MIN_TILE = tile  # hypothesis runs many examples per test call: no monkeypatch fixture
    try:
        got = _run("chunked", case, a, b, chunk_bytes=12 * rows * tile)
    finally:
        chunked._MIN_TILE = old_min_tile
    for name, x, xn, ref in zip(("logp", "entropy", "dh", "dw"), got, naive, (logp_ref, ent_ref, dh_ref, dw_ref)):
        assert_within_naive(name, x, xn, ref, torch.float32)



@pytest.mark.parametrize("rows, vocab, budget", [(4096, 32768, 64 << 20), (2048, 151936, 64 << 20), (7, 3, 10),
                                                 (100000, 151936, 256 << 20), (1, 1, 1)])
def test_tile_shape_respects_the_byte_budget(rows, vocab, budget):
    block, tile = chunked.tile_shape(rows, vocab, budget)
    assert 1 <= block <= rows and 1 <= tile <= vocab
    # fits the budget unless even one row of the narrowest allowed tile does not
    assert block * tile * 4 * chunked._TEMPS <= max(budget, 4 * chunked._TEMPS * min(vocab, chunked._MIN_TILE))
