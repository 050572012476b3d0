"""Kernel benchmarks: time (pytest-benchmark) and peak memory of every provider × loss × mode.

    pytest benchmarks/test_bench_kernels.py                     # CPU set (N 2048+2048, H 1024, V 32768, fp32)
    SDAR_BENCH_SET=quick pytest benchmarks/test_bench_kernels.py  # a small set, to try things fast

Providers are the impl strings plus external baselines (see _kernel_workloads.py); a provider
that cannot run here is recorded as "not available: <reason>" and skipped.
"""

from __future__ import annotations

import os

import pytest
import torch

from _kernel_workloads import LOSSES, MODES, SETS, bench_set, grad_bytes, loss_fn, make_inputs, providers
from _memory import measure_cpu, measure_cuda

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SET = bench_set(DEVICE)
SHAPE = SETS[SET]
ROUNDS = int(os.environ.get("SDAR_BENCH_ROUNDS", "3"))
MIB = 2.0 ** 20

_CHECKED: set[tuple[str, str]] = set()
CASES = [(loss, p, mode) for loss in LOSSES for p in providers(loss, DEVICE) for mode in MODES]


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(SHAPE, DEVICE)


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("loss, provider, mode", CASES, ids=["-".join(c) for c in CASES])
def test_kernels(benchmark, inputs, kernel_results, loss, provider, mode):
    records, meta = kernel_results
    meta.update(set=SET, device=DEVICE.type, shape=SHAPE, rounds=ROUNDS)
    record = dict(loss=loss, provider=provider, mode=mode, grads_mib=grad_bytes(inputs) / MIB)
    records.append(record)
    x = inputs
    try:
        fn = loss_fn(loss, provider, x, DEVICE)
        if (loss, provider) not in _CHECKED:
            fn()  # a first call surfaces set-up failures (and compiles, where a provider compiles)
            _CHECKED.add((loss, provider))
    except Exception as exc:  # noqa: BLE001 - an unavailable external baseline is a result, not a failure
        if provider in ("naive", "chunked", "triton", "forward_grad"):
            raise
        reason = str(exc) if str(exc).startswith("not available") else f"not available: {type(exc).__name__}: {exc}"
        record["note"] = reason[:200]
        pytest.skip(reason)

    def clear():
        x["student"].grad = None
        x["weight"].grad = None

    if mode == "forward":
        def setup():
            clear()
            return (), {}

        def target():
            fn()
            _sync()
    elif mode == "backward":
        def setup():
            clear()
            out = fn()
            _sync()
            return (out,), {}

        def target(out):
            out.backward()
            _sync()
    else:
        def setup():
            clear()
            return (), {}

        def target():
            fn().backward()
            _sync()

    benchmark.pedantic(target, setup=setup, rounds=ROUNDS, warmup_rounds=0, iterations=1)
    record["time_s"] = benchmark.stats.stats.median
    clear()
    if mode == "backward":
        record["note"] = "memory: see full (same peak)"
    if DEVICE.type == "cuda":
        record["peak_extra_mib"] = measure_cuda(loss, provider, mode, x, DEVICE) / MIB
        clear()
    elif mode != "backward" or os.environ.get("SDAR_BENCH_MEMORY_ALL"):
        result = measure_cpu(loss, provider, mode, SHAPE)
        if "error" in result:
            record["note"] = f"memory: {result['error']}"[:200]
        else:
            record["peak_extra_mib"] = result["peak_extra_bytes"] / MIB
    benchmark.extra_info.update({k: v for k, v in record.items() if k not in ("loss", "provider", "mode")})
