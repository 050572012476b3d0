"""Benchmark session plumbing: collects kernel benchmark records and writes the results table.

Choose the shape set with SDAR_BENCH_SET=quick|cpu|gpu (default: gpu on CUDA, cpu elsewhere) and
the number of timed rounds with SDAR_BENCH_ROUNDS (default 3). Results go to
benchmarks/results/kernels_<set>_<device>.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_RECORDS: list[dict] = []
_META: dict = {}


@pytest.fixture(scope="session")
def kernel_results():
    """Append one dict per (loss, provider, mode); written out at the end of the session."""
    return _RECORDS, _META


def _machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    return info


def _markdown(meta: dict, records: list[dict]) -> str:
    machine = _machine()
    lines = [f"# Kernel benchmarks — set `{meta.get('set')}` on {meta.get('device')}", "",
             "Shapes: " + ", ".join(f"{k}={v}" for k, v in meta.get("shape", {}).items()) +
             " (N student rows + N teacher rows for sdar/grpo).", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if k != "date_utc"), "",
             f"Measured {machine['date_utc']} UTC with `pytest benchmarks/` "
             f"({meta.get('rounds')} timed rounds, median). Peak extra memory: peak over the inputs, "
             "gradients included (CPU: fresh process, VmHWM − RSS before the op; CUDA: "
             "max_memory_allocated − allocated before). grads = size of d(hidden) + d(head) that every "
             "provider returns. Ratios are against `naive` of the same loss and mode.", "",
             "| loss | mode | provider | time (s) | × naive | peak extra (MiB) | × naive | grads (MiB) | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["loss"], r["mode"], r["provider"])):
        def fmt(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) else "–"
        lines.append(f"| {r['loss']} | {r['mode']} | {r['provider']} | {fmt(r.get('time_s'), '.3f')} | "
                     f"{fmt(r.get('time_vs_naive'), '.2f')} | {fmt(r.get('peak_extra_mib'), '.0f')} | "
                     f"{fmt(r.get('mem_vs_naive'), '.3f')} | {fmt(r.get('grads_mib'), '.0f')} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session, exitstatus):
    if not _RECORDS:
        return
    naive = {(r["loss"], r["mode"]): r for r in _RECORDS if r["provider"] == "naive"}
    for r in _RECORDS:
        base = naive.get((r["loss"], r["mode"]))
        if base and r.get("time_s") and base.get("time_s"):
            r["time_vs_naive"] = r["time_s"] / base["time_s"]
        if base and r.get("peak_extra_mib") is not None and base.get("peak_extra_mib"):
            r["mem_vs_naive"] = r["peak_extra_mib"] / base["peak_extra_mib"]
    out_dir = os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"kernels_{_META['set']}_{_META['device']}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": _META | {"machine": _machine()}, "records": _RECORDS}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(_markdown(_META, _RECORDS))
