"""Vocab-parallel fused_logprobs / sdar_loss / grpo_sdar_loss / fused_divergence: 2 and 3 gloo ranks on CPU.

One spawn per world size (module fixture) runs every case on every rank and saves the outputs; the
tests compare each rank's outputs with the fp64 hand-derived reference on the whole head
(``_kernels_common.truth``, ``test_kernels_sdar.sdar_truth``) under the STYLE §8 rule (error ≤ k ×
the single-process naive path's error + atol), and grpo_sdar_loss with the single-process op.
The head is split with equal and unequal shards, V not divisible by the world size, a one-row
shard and a layout given by explicit offsets (rank 0 holding the top of the vocabulary); labels
fall in every shard and some rows are ignored or masked. dh is checked on every rank, and dW shard
by shard (each rank's shard against its rows of the full dW: the concatenation in layout order).

The full-distribution estimators (sdar_loss's "full_reverse_kl" / "full_forward_kl" / "jsd", grpo_sdar_loss's
sdar_estimator, fused_divergence) are compared with the single-process op of the same implementation on the
whole head (tight fp32 bound; that op is itself checked against fp64 in test_kernels_sdar_estimators.py), and
sdar_loss's also with the fp64 reference of that module, per-token values (reduction="none" with a
per-token upstream gradient ≠ 1) and mean/sum losses alike.
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sdar_kernels as sk

from _kernels_common import assert_within_naive, err, make_case, small_chunk, truth
from test_kernels_sdar import sdar_truth
from test_kernels_sdar_estimators import reference as full_truth

N, H = 9, 16  # tiny: Triton runs through its interpreter


def _case(name, op, impl, sizes, *, kind="random", explicit=False, gate="gap", chunk=False, seed=0,
          dtype=torch.float32, frozen=False, estimator="sdar", reduction="mean", nograd=False):
    return dict(name=name, op=op, impl=impl, sizes=sizes, kind=kind, explicit=explicit, gate=gate, chunk=chunk,
                seed=seed, dtype=dtype, frozen=frozen, estimator=estimator, reduction=reduction, nograd=nograd)


def _full(name, op, impl, sizes, estimator, reduction="none", **kw):
    """A full-distribution case: op "full" (sdar_loss), "divergence" (fused_divergence) or "grpo"."""
    return _case(name, op, impl, sizes, estimator=estimator, reduction=reduction, **kw)


FULL_OPS = ("full", "divergence")
JSD_BETA = 0.3


CASES = {
    2: [
        _case("logprobs-chunked-unequal", "logprobs", "chunked", [18, 19]),
        _case("logprobs-chunked-rowblocks", "logprobs", "chunked", [18, 19], chunk=True, seed=1),
        _case("logprobs-naive", "logprobs", "naive", [18, 19], kind="negative"),
        _case("logprobs-triton", "logprobs", "triton", [18, 19]),
        _case("logprobs-chunked-explicit-peaked", "logprobs", "chunked", [20, 17], kind="peaked", explicit=True),
        _case("logprobs-chunked-bf16", "logprobs", "chunked", [18, 19], dtype=torch.bfloat16),
        _case("sdar-chunked-frozen-head", "sdar", "chunked", [18, 19], frozen=True),
        _case("sdar-chunked-soft_or", "sdar", "chunked", [20, 20], gate="soft_or"),
        _case("sdar-naive-entropy", "sdar", "naive", [20, 17], gate="entropy", explicit=True),
        _case("sdar-triton-gap", "sdar", "triton", [18, 19], gate="gap"),
        _case("grpo-chunked", "grpo", "chunked", [18, 19], gate="soft_or"),
        _case("grpo-forward_grad-chunks", "grpo", "forward_grad", [18, 19], gate="soft_or", chunk=True),
        _case("grpo-forward_grad-frozen-explicit", "grpo", "forward_grad", [20, 17], frozen=True, explicit=True),
        _case("errors", "errors", "chunked", [18, 19]),
        _full("full-rkl-chunked-rowchunks", "full", "chunked", [18, 19], "full_reverse_kl", chunk=True),
        _full("full-fkl-chunked-equal-mean", "full", "chunked", [20, 20], "full_forward_kl", reduction="mean"),
        _full("full-jsd-chunked-explicit-peaked", "full", "chunked", [20, 17], "jsd", kind="peaked", explicit=True),
        _full("full-rkl-naive-negative", "full", "naive", [18, 19], "full_reverse_kl", kind="negative"),
        _full("full-fkl-naive-equal", "full", "naive", [20, 20], "full_forward_kl", gate="soft_or"),
        _full("full-jsd-naive-mean", "full", "naive", [18, 19], "jsd", reduction="mean", seed=2),
        _full("full-jsd-triton", "full", "triton", [18, 19], "jsd"),
        _full("divergence-fkl-chunked-frozen-sum", "divergence", "chunked", [18, 19], "full_forward_kl",
              reduction="sum", frozen=True),
        _full("divergence-jsd-chunked-no-grad", "divergence", "chunked", [20, 17], "jsd", nograd=True),
        _full("grpo-jsd-chunked", "grpo", "chunked", [18, 19], "jsd", gate="soft_or", chunk=True),
    ],
    3: [
        _case("logprobs-chunked", "logprobs", "chunked", [12, 12, 13]),
        _case("logprobs-naive-one-row-shard", "logprobs", "naive", [1, 20, 16]),
        _case("logprobs-triton-negative", "logprobs", "triton", [13, 12, 12], kind="negative"),
        _case("sdar-chunked-entropy", "sdar", "chunked", [1, 20, 16], gate="entropy"),
        _case("sdar-naive-soft_or", "sdar", "naive", [12, 12, 13], gate="soft_or"),
        _case("sdar-triton-soft_or", "sdar", "triton", [12, 12, 13], gate="soft_or", explicit=True),
        _case("grpo-naive", "grpo", "naive", [12, 12, 13]),
        _case("grpo-triton", "grpo", "triton", [13, 12, 12], gate="entropy"),
        _case("grpo-forward_grad-one-row-shard", "grpo", "forward_grad", [1, 20, 16], gate="entropy", chunk=True),
        _full("full-rkl-chunked-one-row-shard", "full", "chunked", [1, 20, 16], "full_reverse_kl", chunk=True),
        _full("full-fkl-chunked-negative", "full", "chunked", [12, 12, 13], "full_forward_kl", kind="negative"),
        _full("full-jsd-chunked-mean", "full", "chunked", [13, 12, 12], "jsd", reduction="mean", seed=3),
        _full("full-rkl-naive-explicit", "full", "naive", [12, 12, 13], "full_reverse_kl", explicit=True),
        _full("full-fkl-naive-one-row-shard-mean", "full", "naive", [1, 20, 16], "full_forward_kl",
              reduction="mean"),
        _full("full-jsd-naive-peaked", "full", "naive", [13, 12, 12], "jsd", kind="peaked"),
        _full("full-rkl-triton-mean", "full", "triton", [12, 12, 13], "full_reverse_kl", reduction="mean"),
        _full("divergence-rkl-naive-sum", "divergence", "naive", [12, 12, 13], "full_reverse_kl",
              reduction="sum"),
        _full("grpo-rkl-naive", "grpo", "naive", [12, 12, 13], "full_reverse_kl"),
    ],
}


def _layout(case, world):
    """Shard starts per rank. Default: contiguous in rank order; explicit: rank order reversed."""
    sizes = case["sizes"]
    order = list(reversed(range(world))) if case["explicit"] else list(range(world))
    starts, pos = [0] * world, 0
    for r in order:
        starts[r], pos = pos, pos + sizes[r]
    return starts, sum(sizes)


def _inputs(case, world):
    """Full-head inputs (fp32) of a case, identical on every rank and in the test process."""
    starts, v = _layout(case, world)
    c = make_case(N, H, v, case["dtype"], case["kind"], seed=case["seed"])
    labels = c.labels.clone()
    for r in range(world):  # a label in every shard (rows 2.. ; row 1 stays ignored)
        labels[2 + r] = starts[r] + case["sizes"][r] - 1 - r % case["sizes"][r]
    g = torch.Generator().manual_seed(100 + case["seed"])
    teacher = (c.hidden.float() + 0.7 * torch.randn(N, H, generator=g)).to(case["dtype"])
    mask = torch.ones(N)
    mask[-1], mask[-2] = 0.0, 0.5
    return dict(hidden=c.hidden, weight=c.weight, labels=labels, temperature=c.temperature, teacher=teacher,
                mask=mask, a=torch.randn(N, generator=g), b=torch.randn(N, generator=g),
                advantages=torch.randn(N, generator=g), old=torch.randn(N, generator=g) * 0.1 - 2.0,
                ref=torch.randn(N, generator=g) * 0.1 - 2.0, starts=starts, vocab=v)


def _full_chunk(case, world):
    """One chunk_bytes for every rank (the full estimators walk the same token chunks on every rank, sized
    by the mean shard): 4 token rows a chunk, so N = 9 rows are 3 chunks with a ragged last one."""
    return 24 * 4 * -(-sum(case["sizes"]) // world)


def _shard_kwargs(case, x, rank):
    kw = dict(impl=case["impl"], process_group=dist.group.WORLD)
    if case["explicit"]:
        kw.update(vocab_start=x["starts"][rank], vocab_size=x["vocab"])
    if case["chunk"] and case["impl"] == "forward_grad":  # the same token chunks on every rank: 4 rows of V
        kw.update(chunk_bytes=4 * 4 * x["vocab"])
    elif case["chunk"]:
        full = case["estimator"] != "sdar"
        kw.update(chunk_bytes=_full_chunk(case, len(x["starts"])) if full else small_chunk(case["sizes"][rank]))
    return kw


def _grpo_call(x, h, w, case, **kw):
    return sk.grpo_sdar_loss(h.view(3, 3, H), x["teacher"].view(3, 3, H), w, x["labels"].view(3, 3),
                             x["advantages"].view(3, 3), x["old"].view(3, 3), x["ref"].view(3, 3),
                             x["mask"].view(3, 3), sdar_coef=0.3, kl_coef=0.05, entropy_coef=0.02,
                             agg="seq-mean-token-mean", temperature=x["temperature"], gate=case["gate"],
                             sdar_estimator=case["estimator"], jsd_beta=JSD_BETA, **kw)


_KIND = {"full_reverse_kl": "reverse_kl", "full_forward_kl": "forward_kl", "jsd": "jsd"}


def _full_call(case, x, h, w, **kw):
    """The full-distribution op of a case (with or without a group): (loss or per-token values, backward
    done unless the case runs without gradient)."""
    if case["op"] == "full":
        loss = sk.sdar_loss(h, x["teacher"], w, x["labels"], mask=x["mask"], gate=case["gate"], beta=5.0,
                            estimator=case["estimator"], jsd_beta=JSD_BETA, reduction=case["reduction"],
                            temperature=x["temperature"], **kw).loss
    else:  # fused_divergence with int labels (ignore_index rows excluded)
        with torch.set_grad_enabled(not case["nograd"]):
            loss = sk.fused_divergence(h, x["teacher"], w, x["labels"], kind=_KIND[case["estimator"]], beta=JSD_BETA,
                                       reduction=case["reduction"], temperature=x["temperature"], **kw)
    if not case["nograd"]:
        (loss if case["reduction"] != "none" else (x["a"] * loss).sum()).backward()
    return loss.detach()


def _run_case(case, rank, world):
    x = _inputs(case, world)
    start = x["starts"][rank]
    h = x["hidden"].clone().requires_grad_()
    w = x["weight"][start:start + case["sizes"][rank]].clone().requires_grad_(not case["frozen"])
    kw = _shard_kwargs(case, x, rank)
    if case["op"] == "logprobs":
        logp, ent = sk.fused_logprobs(h, w, x["labels"], temperature=x["temperature"], return_entropy=True, **kw)
        ((x["a"] * logp).sum() + (x["b"] * ent).sum()).backward()
        out = dict(logp=logp.detach(), entropy=ent.detach())
    elif case["op"] == "sdar":
        res = sk.sdar_loss(h, x["teacher"], w, x["labels"], mask=x["mask"], gate=case["gate"], beta=5.0,
                           temperature=x["temperature"], **kw)
        (res.loss + (x["a"] * res.student_logp).sum()).backward()
        out = {k: getattr(res, k).detach() for k in ("loss", "student_logp", "teacher_logp", "gap", "gate",
                                                     "student_entropy")}
    elif case["op"] == "grpo":
        loss, metrics = _grpo_call(x, h, w, case, **kw)
        loss.backward()
        out = dict(loss=loss.detach(), **metrics)
    elif case["op"] in FULL_OPS:
        out = dict(loss=_full_call(case, x, h, w, **kw))
    else:  # errors: every rank raises the same error, before or after the same collectives
        out = {}
        bad = x["labels"].clone()
        bad[0] = x["vocab"]  # the first id past the GLOBAL vocabulary
        try:
            sk.fused_logprobs(h, w, bad, **kw)
        except ValueError as err:
            out["global_range"] = str(err)
        try:
            sk.fused_logprobs(h, w, x["labels"], vocab_start=x["vocab"] - 1, vocab_size=x["vocab"], **kw)
        except ValueError as err:
            out["shard_range"] = str(err)
        try:
            sk.fused_divergence(h, x["teacher"], w, x["labels"], top_k=3, **kw)
        except NotImplementedError as err:
            out["top_k"] = str(err)
        return out
    out.update(dh=h.grad, dw=w.grad, start=start)
    return out


def _worker(rank, world, port, outdir):
    torch.set_num_threads(1)
    if os.environ.get("SDAR_TEST_DEVICE"):
        import conftest  # noqa: F401  (a spawned rank: installs the GPU shim of tests/conftest.py here too)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                           timeout=timedelta(seconds=60))
    results = {}
    for case in CASES[world]:
        try:
            results[case["name"]] = _run_case(case, rank, world)
        except Exception:  # reported by the test of this case
            results[case["name"]] = {"error": traceback.format_exc()}
    torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RESULTS: dict[int, list[dict]] = {}


def _results(world: int) -> list[dict]:
    """Spawns ``world`` ranks once per world size; returns each rank's {case name: outputs}."""
    if world not in _RESULTS:
        with tempfile.TemporaryDirectory() as outdir:
            mp.spawn(_worker, args=(world, _free_port(), outdir), nprocs=world, join=True)
            _RESULTS[world] = [torch.load(os.path.join(outdir, f"rank{r}.pt")) for r in range(world)]
    return _RESULTS[world]


def _all_cases(full: bool):
    return [pytest.param(world, case, id=f"world{world}-{case['name']}") for world in CASES for case in CASES[world]
            if case["op"] != "errors" and (case["estimator"] != "sdar") == full]


def _naive_single(case, x, impl="naive"):
    """The single-process path in fp32 (naive: the error yardstick of STYLE §8), with the whole head."""
    h = x["hidden"].clone().requires_grad_()
    w = x["weight"].clone().requires_grad_(not case["frozen"])
    if case["op"] in FULL_OPS:
        chunk = dict(chunk_bytes=_full_chunk(case, len(x["starts"]))) if case["chunk"] else {}
        return dict(loss=_full_call(case, x, h, w, impl=impl, **chunk), dh=h.grad, dw=w.grad)
    if case["op"] == "logprobs":
        logp, ent = sk.fused_logprobs(h, w, x["labels"], temperature=x["temperature"], return_entropy=True,
                                      impl="naive")
        ((x["a"] * logp).sum() + (x["b"] * ent).sum()).backward()
        out = dict(logp=logp.detach(), entropy=ent.detach())
    elif case["op"] == "sdar":
        res = sk.sdar_loss(h, x["teacher"], w, x["labels"], mask=x["mask"], gate=case["gate"], beta=5.0,
                           temperature=x["temperature"], impl="naive")
        (res.loss + (x["a"] * res.student_logp).sum()).backward()
        out = {k: getattr(res, k).detach() for k in ("loss", "student_logp", "teacher_logp", "gap", "gate",
                                                     "student_entropy")}
    else:
        loss, metrics = _grpo_call(x, h, w, case, impl=impl)
        loss.backward()
        out = dict(loss=loss.detach(), **metrics)
    return dict(out, dh=h.grad, dw=w.grad)


def _reference(case, x):
    """fp64 truth on the whole head: {name: tensor} with dh and the full dW."""
    valid = x["labels"] != -100
    if case["op"] == "logprobs":
        _, logp, ent, dh, dw = truth(x["hidden"], x["weight"], x["labels"].clamp_min(0), valid, x["temperature"],
                                     x["a"], x["b"])
        return dict(logp=logp, entropy=ent, dh=dh, dw=dw)
    loss, fields, dh, dw = sdar_truth(x["hidden"], x["teacher"], x["weight"], x["labels"], x["mask"], gate=case["gate"],
                                      beta=5.0, estimator="sdar", reduction="mean", temperature=x["temperature"],
                                      upstream=None, extra=x["a"])
    return dict(loss=loss, dh=dh, dw=dw, **fields)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world, case", _all_cases(full=False))
def test_vocab_parallel_matches_whole_head(world, case):
    results = _results(world)
    x = _inputs(case, world)
    naive = _naive_single(case, x)
    if case["op"] == "grpo":
        # The single-process op (fp32) is the reference here; the pieces it is built from are
        # checked against fp64 above. Same work, so the vocab-parallel result must match tightly.
        ref, naive = naive, None
    else:
        ref = _reference(case, x)
    dtype = case["dtype"]
    if case["frozen"]:  # a frozen head: no dW anywhere, dh still all-reduced
        ref.pop("dw")
    for rank in range(world):
        got = results[rank][case["name"]]
        assert "error" not in got, f"rank {rank} failed:\n{got.get('error')}"
        start, stop = got["start"], got["start"] + case["sizes"][rank]
        if case["frozen"]:
            assert got["dw"] is None
        else:
            assert got["dw"].shape == (stop - start, H)
        assert got["dh"].dtype == dtype
        for name, r in ref.items():
            value = got[name]
            if name == "dw":  # this rank's shard of the full gradient
                r = r[start:stop]
            if naive is None:
                scale = 1.0 + r.double().abs().max().item()
                assert (value.double() - r.double()).abs().max().item() <= 2e-5 * scale, f"rank {rank}: {name}"
            else:
                n = naive[name][start:stop] if name == "dw" else naive[name]
                assert_within_naive(f"rank {rank}: {name}", value, n, r, dtype)
                bound = 1e-4 if dtype == torch.float32 else 2e-2
                assert err(value, r) <= bound * (1 + r.double().abs().max().item()), f"rank {rank}: {name}"


def _check_rank_outputs(case, rank, got, ref, bound):
    """Every field of ``ref`` (single process, whole head) against this rank's outputs; dW shard by shard."""
    assert "error" not in got, f"rank {rank} failed:\n{got.get('error')}"
    start, stop = got["start"], got["start"] + case["sizes"][rank]
    for name, r in ref.items():
        value = got[name]
        if r is None:  # no gradient (frozen head / no_grad): none on the ranks either
            assert value is None, f"rank {rank}: {name}"
            continue
        if name == "dw":
            r = r[start:stop]
        assert value.shape == r.shape and value.dtype == r.dtype, f"rank {rank}: {name}"
        e = err(value, r)
        assert e <= bound * (1.0 + r.double().abs().max().item()), f"rank {rank}: {name} error {e:.3g}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world, case", _all_cases(full=True))
def test_vocab_parallel_full_estimators_match_whole_head(world, case):
    results = _results(world)
    x = _inputs(case, world)
    # The same implementation on the whole head, one process: same maths, other summation order.
    single = _naive_single(case, x, impl=case["impl"])
    assert single["dh"] is not None or case["nograd"]
    for rank in range(world):
        _check_rank_outputs(case, rank, results[rank][case["name"]], single, 2e-5)
    if case["op"] != "full":
        return
    # sdar_loss: also the fp64 reference written from the formulas (STYLE §8 against the naive path).
    loss, dh, dw = full_truth(x["hidden"], x["teacher"], x["weight"], x["labels"], x["mask"],
                              estimator=case["estimator"], jsd_beta=JSD_BETA, gate=case["gate"], beta=5.0,
                              temperature=x["temperature"], reduction=case["reduction"], upstream=x["a"])
    naive = single if case["impl"] == "naive" else _naive_single(case, x)
    for rank in range(world):
        got = results[rank][case["name"]]
        start, stop = got["start"], got["start"] + case["sizes"][rank]
        for name, r, n in (("loss", loss, naive["loss"]), ("dh", dh, naive["dh"]),
                           ("dw", dw[start:stop], naive["dw"][start:stop])):
            assert_within_naive(f"rank {rank}: {name}", got[name], n, r, torch.float32)
            assert err(got[name], r) <= 1e-4 * (1 + r.abs().max().item()), f"rank {rank}: {name}"


@pytest.mark.timeout(300)
def test_vocab_parallel_errors_name_the_global_vocabulary():
    world = 2
    case = next(c for c in CASES[world] if c["op"] == "errors")
    x = _inputs(case, world)
    for rank, results in enumerate(_results(world)):
        got = results["errors"]
        assert "error" not in got, got.get("error")
        assert f"[0, {x['vocab']})" in got.get("global_range", ""), f"rank {rank}: {got}"
        assert "exceeds vocab_size" in got.get("shard_range", ""), f"rank {rank}: {got}"
        assert "top_k" in got.get("top_k", ""), f"rank {rank}: {got}"


def test_shard_arguments_without_a_group_are_rejected():
    case = make_case(5, 8, 11, torch.float32)
    with pytest.raises(ValueError, match="process_group"):
        sk.fused_logprobs(case.hidden, case.weight, case.labels, vocab_start=3, impl="chunked")
    with pytest.raises(ValueError, match="not initialised"):
        sk.fused_logprobs(case.hidden, case.weight, case.labels, process_group=object(), impl="chunked")
    with pytest.raises(ValueError, match="not initialised"):
        sk.sdar_loss(case.hidden, case.hidden, case.weight, case.labels, estimator="jsd", process_group=object())
    with pytest.raises(ValueError, match="process_group"):
        sk.fused_divergence(case.hidden, case.hidden, case.weight, case.labels, vocab_start=2, impl="chunked")
    with pytest.raises(ValueError, match="not initialised"):
        sk.gated_divergence(case.hidden, case.hidden, case.weight, case.labels, torch.ones(5), process_group=object())
