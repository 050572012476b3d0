"""Peak extra memory of one benchmark case.

CPU: run in a fresh child process (``measure_cpu``), which builds the inputs, warms the libraries up
on a tiny case, records its resident set size, resets the kernel's high-water mark
(``/proc/self/clear_refs``), runs the case once and reports VmHWM − baseline: the peak memory of
the op on top of its inputs (gradients included). glibc's mmap threshold is pinned so that freed
large blocks go back to the system and the resident set tracks live memory.
CUDA: in process, ``max_memory_allocated`` minus the memory allocated before the case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_case(loss: str, provider: str, mode: str, x: dict, device: torch.device) -> None:
    """One execution of the measured mode (forward keeps the graph alive, as training does)."""
    from _kernel_workloads import loss_fn
    fn = loss_fn(loss, provider, x, device)
    if mode == "forward":
        out = fn()
        del out
    else:  # backward and full both hold the forward state and then run the backward
        fn().backward()


def measure_cuda(loss: str, provider: str, mode: str, x: dict, device: torch.device) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run_case(loss, provider, mode, x, device)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def measure_cpu(loss: str, provider: str, mode: str, shape: dict, timeout: float = 1800) -> dict:
    """Runs this file in a fresh process; returns {"peak_extra_bytes": ..} or {"error": ..}."""
    root = os.path.dirname(HERE)  # the repository root, so the child imports this checkout's sdar_kernels
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", PYTHONPATH=path)
    arg = json.dumps(dict(loss=loss, provider=provider, mode=mode, shape=shape))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_memory.py"), arg], capture_output=True, text=True,
                          env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["child failed"])[-1]}
    return json.loads(lines[-1])


def _child(arg: str) -> None:
    sys.path.insert(0, HERE)
    from _kernel_workloads import SETS, make_inputs
    spec = json.loads(arg)
    device = torch.device("cpu")
    # Warm-up on a tiny case: loads kernels, thread pools and lazy modules outside the measurement.
    run_case(spec["loss"], spec["provider"], spec["mode"], make_inputs(SETS["quick"] | dict(n=128, seq_len=64),
                                                                        device), device)
    x = make_inputs(spec["shape"], device)
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    run_case(spec["loss"], spec["provider"], spec["mode"], x, device)
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_extra_bytes": (peak - base) * 1024}))


if __name__ == "__main__":
    _child(sys.argv[1])
