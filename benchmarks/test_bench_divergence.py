"""Divergence benchmarks: time (pytest-benchmark) and peak memory of fused_divergence vs naive and Liger.

    pytest benchmarks/test_bench_divergence.py                       # CPU set: N 2048 + 2048, H 1024, V 32768, fp32
    SDAR_BENCH_SET=quick pytest benchmarks/test_bench_divergence.py  # a small set, to try things fast
    SDAR_BENCH_MODES=full SDAR_BENCH_ROUNDS=2 pytest benchmarks/test_bench_divergence.py  # fwd+bwd only
    SDAR_BENCH_THREADS=1 ...                                         # single-threaded, results *_t1.*

Workloads: reverse KL, forward KL and JSD_β=0.5 (token mean over all rows, fwd + bwd = "full", and the
forward alone), plus reverse KL with reduction="none" and a random per-token upstream gradient (the
composable path, which recomputes in backward when the head trains). Providers: the impl strings
("naive" = the package's materialising reference, "chunked", "triton" on CUDA) and Liger's
``LigerFusedLinearJSDLoss`` doing the same work (weight_hard_loss = 0, weight_soft_loss = 1; its β follows
the same TRL convention: β = 0 forward KL, β = 1 reverse KL). Before timing, each provider's value is
checked against ``chunked`` on the first 64 rows, so the comparison is of the same quantity.

Peak memory on CPU: a fresh child process per case (this file run as a script) builds the inputs, warms
up on a tiny case, resets the kernel's high-water mark and reports VmHWM − RSS before the op (gradients
included); on CUDA, max_memory_allocated − allocated before. Results: benchmarks/results/
divergence_<set>_<device>.{json,md}, with ratios against naive of the same workload and mode.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from sdar_kernels.divergence import fused_divergence  # noqa: E402

SETS = {
    "cpu": dict(n=2048, h=1024, v=32768, dtype="float32"),
    "quick": dict(n=256, h=256, v=4096, dtype="float32"),
    "gpu": dict(n=8192, h=4096, v=151936, dtype="bfloat16"),
}
# (name, kind, reduction); Liger's β for the same divergence
WORKLOADS = [("reverse_kl", "reverse_kl", "mean"), ("forward_kl", "forward_kl", "mean"), ("jsd", "jsd", "mean"),
             ("reverse_kl_none", "reverse_kl", "none")]
LIGER_BETA = {"reverse_kl": 1.0, "forward_kl": 0.0, "jsd": 0.5}
MODES = tuple(os.environ.get("SDAR_BENCH_MODES", "forward,full").split(","))  # e.g. SDAR_BENCH_MODES=full
MIB = 2.0 ** 20
# SDAR_BENCH_THREADS=1: single-threaded runs (a fairer work comparison on a shared, oversubscribed machine,
# where idle-waiting OpenMP threads inflate the many-small-ops providers). Results get a "_t<n>" suffix.
THREADS = int(os.environ.get("SDAR_BENCH_THREADS", "0"))
if THREADS > 0:
    torch.set_num_threads(THREADS)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _set_name(device: torch.device) -> str:
    name = os.environ.get("SDAR_BENCH_SET") or ("gpu" if device.type == "cuda" else "cpu")
    if name not in SETS:
        raise ValueError(f"SDAR_BENCH_SET={name!r}; expected one of {sorted(SETS)}")
    return name


def providers(workload: str, device: torch.device) -> list[str]:
    impls = ["naive", "chunked"] + (["triton"] if device.type == "cuda" else [])
    return impls + (["liger_jsd"] if workload != "reverse_kl_none" else [])


def make_inputs(shape: dict, device: torch.device, seed: int = 0) -> dict:
    """Student/teacher hidden (N, H) (teacher = student + noise), trainable head (V, H), labels, upstream."""
    g = torch.Generator().manual_seed(seed)
    n, h, v = shape["n"], shape["h"], shape["v"]
    dtype = getattr(torch, shape["dtype"])
    student = torch.randn(n, h, generator=g).div_(h ** 0.25)
    teacher = (student + 0.3 * torch.randn(n, h, generator=g)).to(device=device, dtype=dtype)
    weight = (torch.randn(v, h, generator=g) / h ** 0.5).to(device=device, dtype=dtype)
    return dict(student=student.to(device=device, dtype=dtype).requires_grad_(), teacher=teacher,
                weight=weight.requires_grad_(), labels=torch.randint(0, v, (n,), generator=g).to(device),
                upstream=torch.randn(n, generator=g).to(device))


def loss_fn(workload: str, provider: str, x: dict, rows: slice = slice(None)):
    """A zero-argument callable returning the scalar to differentiate (raises "not available: ..." for Liger)."""
    _, kind, reduction = next(w for w in WORKLOADS if w[0] == workload)
    hs, ht, lab = x["student"][rows], x["teacher"][rows], x["labels"][rows]
    if provider != "liger_jsd":
        if reduction == "none":
            up = x["upstream"][rows]
            return lambda: (fused_divergence(hs, ht, x["weight"], lab, kind=kind, reduction="none", impl=provider)
                            * up).sum()
        return lambda: fused_divergence(hs, ht, x["weight"], lab, kind=kind, beta=0.5, impl=provider)
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"not available: cannot import liger_kernel: {exc}") from exc
    mod = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=LIGER_BETA[kind],
                                  compiled=x["student"].is_cuda)
    return lambda: mod(hs, x["weight"], ht, x["weight"], lab)


def run_case(workload: str, provider: str, mode: str, x: dict) -> None:
    out = loss_fn(workload, provider, x)()
    if mode == "full":
        out.backward()
    del out


# ----------------------------------------------------------------------------------------------- memory
from _memory import _status_kib  # noqa: E402 - the one /proc reader of the benchmarks


def measure_cpu(workload: str, provider: str, mode: str, shape: dict) -> dict:
    """Fresh child process; returns {"peak_extra_bytes": ...} or {"error": ...}."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    arg = json.dumps(dict(workload=workload, provider=provider, mode=mode, shape=shape))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), arg], capture_output=True, text=True, env=env,
                          timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["child failed"])[-1]}
    return json.loads(lines[-1])


def measure_cuda(workload: str, provider: str, mode: str, x: dict) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run_case(workload, provider, mode, x)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _child(arg: str) -> None:
    spec = json.loads(arg)
    device = torch.device("cpu")
    run_case(spec["workload"], spec["provider"], spec["mode"], make_inputs(SETS["quick"] | dict(n=128), device))
    x = make_inputs(spec["shape"], device)
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    run_case(spec["workload"], spec["provider"], spec["mode"], x)
    print(json.dumps({"peak_extra_bytes": (_status_kib("VmHWM") - base) * 1024}))


# ----------------------------------------------------------------------------------------------- pytest
DEVICE = _device()
SET = _set_name(DEVICE)
SHAPE = SETS[SET]
ROUNDS = int(os.environ.get("SDAR_BENCH_ROUNDS", "3"))
CASES = [(w[0], p, m) for w in WORKLOADS for p in providers(w[0], DEVICE) for m in MODES]
_RECORDS: list[dict] = []
_CHECKED: set[tuple[str, str]] = set()


def _machine() -> dict:
    import triton

    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = names[0] if names else info["cpu"]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _write_results() -> None:
    naive = {(r["workload"], r["mode"]): r for r in _RECORDS if r["provider"] == "naive"}
    for r in _RECORDS:
        base = naive.get((r["workload"], r["mode"]))
        if base and r.get("time_s") and base.get("time_s"):
            r["time_vs_naive"] = r["time_s"] / base["time_s"]
        if base and r.get("cpu_s") and base.get("cpu_s"):
            r["cpu_vs_naive"] = r["cpu_s"] / base["cpu_s"]
        if base and r.get("peak_extra_mib") is not None and base.get("peak_extra_mib"):
            r["mem_vs_naive"] = r["peak_extra_mib"] / base["peak_extra_mib"]
    meta = dict(set=SET, device=DEVICE.type, shape=SHAPE, rounds=ROUNDS,
                date_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()), machine=_machine())
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    suffix = f"_t{THREADS}" if THREADS > 0 else ""
    stem = os.path.join(HERE, "results", f"divergence_{SET}_{DEVICE.type}{suffix}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "records": _RECORDS}, f, indent=1)
    lines = [f"# Divergence benchmarks — set `{SET}` on {DEVICE.type}", "",
             "Shape: " + ", ".join(f"{k}={v}" for k, v in SHAPE.items()) + " (N student rows + N teacher rows, "
             "shared head; student hidden and head trainable).", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in meta["machine"].items()), "",
             f"Measured {meta['date_utc']} UTC, `pytest benchmarks/test_bench_divergence.py` ({ROUNDS} timed "
             "rounds, median). full = forward + backward; forward keeps the graph alive. Peak extra memory: "
             "CPU — fresh process, VmHWM − RSS before the op (gradients included); CUDA — max_memory_allocated "
             "− allocated before. Ratios against `naive` of the same workload and mode. CPU s = the "
             "process's CPU time (all threads, min over rounds): on a shared machine wall time swings with "
             "other jobs' load, CPU time much less.", "",
             "| workload | mode | provider | wall (s) | × naive | CPU (s) | × naive | peak extra (MiB) | × naive | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else "–"

    for r in sorted(_RECORDS, key=lambda r: (r["workload"], r["mode"], r["provider"])):
        lines.append(f"| {r['workload']} | {r['mode']} | {r['provider']} | {fmt(r.get('time_s'), '.3f')} | "
                     f"{fmt(r.get('time_vs_naive'), '.2f')} | {fmt(r.get('cpu_s'), '.2f')} | "
                     f"{fmt(r.get('cpu_vs_naive'), '.2f')} | {fmt(r.get('peak_extra_mib'), '.0f')} | "
                     f"{fmt(r.get('mem_vs_naive'), '.3f')} | {r.get('note', '')} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def inputs():
    x = make_inputs(SHAPE, DEVICE)
    yield x
    if _RECORDS:
        _write_results()


def _check_same_work(workload: str, provider: str, x: dict) -> None:
    """The provider computes the same value as ``chunked`` on the first 64 rows (fp32 tolerance)."""
    rows = slice(0, 64)
    with torch.no_grad():
        ours = loss_fn(workload, "chunked", x, rows)().float()
    theirs = loss_fn(workload, provider, x, rows)()
    theirs.backward()  # also warms up the provider's backward
    theirs = theirs.detach().float()
    x["student"].grad = x["weight"].grad = None
    tol = 1e-3 if SHAPE["dtype"] == "float32" else 3e-2
    assert torch.allclose(theirs, ours, rtol=tol, atol=tol), f"{provider}: {theirs.item()} vs {ours.item()}"


@pytest.mark.parametrize("workload, provider, mode", CASES, ids=["-".join(c) for c in CASES])
def test_divergence(benchmark, inputs, workload, provider, mode):
    record = dict(workload=workload, provider=provider, mode=mode)
    _RECORDS.append(record)
    x = inputs
    try:
        if (workload, provider) not in _CHECKED:
            _check_same_work(workload, provider, x)
            _CHECKED.add((workload, provider))
    except Exception as exc:  # noqa: BLE001 - an unavailable external baseline is a result, not a failure
        if provider != "liger_jsd" or isinstance(exc, AssertionError):
            raise
        reason = str(exc) if str(exc).startswith("not available") else f"not available: {type(exc).__name__}: {exc}"
        record["note"] = reason[:200]
        pytest.skip(reason)

    def clear():
        x["student"].grad = None
        x["weight"].grad = None

    cpu_times: list[float] = []

    def once():
        t0 = time.process_time()
        run_case(workload, provider, mode, x)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        cpu_times.append(time.process_time() - t0)

    # no warm-up round: the same-work check above already ran every code path of this provider once
    benchmark.pedantic(once, setup=clear, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    record["time_s"] = benchmark.stats.stats.median
    record["time_min_s"] = benchmark.stats.stats.min
    record["cpu_s"] = min(cpu_times)  # CPU seconds of this process (all threads): robust to a shared machine
    clear()
    if DEVICE.type == "cuda":
        record["peak_extra_mib"] = measure_cuda(workload, provider, mode, x) / MIB
    else:
        mem = measure_cpu(workload, provider, mode, SHAPE)
        if "error" in mem:
            record["note"] = f"memory: {mem['error']}"[:200]
        else:
            record["peak_extra_mib"] = mem["peak_extra_bytes"] / MIB
    benchmark.extra_info.update({k: v for k, v in record.items() if k not in ("workload", "provider", "mode")})
    clear()


if __name__ == "__main__":
    _child(sys.argv[1])
