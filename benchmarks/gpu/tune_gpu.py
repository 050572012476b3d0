"""Launch-configuration sweep of the two Triton launchers at one Qwen3 head shape (bf16).

    python3 benchmarks/gpu/tune_gpu.py --h 4096 --n 8192 --out benchmarks/results/gpu

row_stats runs over student + teacher rows (2N), grad over the student rows (N) with both strategies; each
configuration is timed (CUDA-event median) and checked against the default configuration's output, so a fast
but wrong configuration shows as such. The % of floor uses the flops of that launch alone (row_stats 2·2N·H·V;
grad workspace/atomic 2·N·H·V for the recomputed logits + 4·N·H·V for dh and dW) at the measured matmul rate.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from bench_gpu import _events_ms, _positive, machine_rates  # noqa: E402

VOCAB = 151_936
# First entries: the defaults (the reference of the error column). Round 1 on an H200 (block_n 128 default then)
# made 128 x 256 x 64 the forward default; round 2 looks around it and at the dz kernel's tiles.
FWD = [dict(block_m=128, block_n=256, block_k=64, num_warps=8, num_stages=3),
       dict(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3),
       dict(block_m=128, block_n=256, block_k=64, num_warps=8, num_stages=4),
       dict(block_m=128, block_n=256, block_k=32, num_warps=8, num_stages=4),
       dict(block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=4),
       dict(block_m=64, block_n=256, block_k=64, num_warps=4, num_stages=3)]
BWD = [dict(strategy="workspace"),
       dict(strategy="workspace", block_m=128, block_n=256, block_k=64, group_m=8, num_warps=8, num_stages=3),
       dict(strategy="workspace", block_m=64, block_n=256, block_k=64, group_m=8, num_warps=8, num_stages=4),
       dict(strategy="two_pass"),
       dict(strategy="two_pass", block_m=128, block_n=256, block_k=64, group_m=8, num_warps=8, num_stages=3),
       dict(strategy="atomic", skip_threshold=2.0**-14),
       dict(strategy="atomic", skip_threshold=2.0**-20),
       dict(strategy="atomic", skip_threshold=2.0**-26)]


def _median_ms(fn, reps=7, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    return _events_ms(fn, reps)


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--h", type=int, default=4096)
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--budget-s", type=float, default=60.0)
    p.add_argument("--logit-scale", type=_positive, default=1.0, help="standard deviation of the logits")
    p.add_argument("--only", choices=["row_stats", "grad"], help="sweep one launcher only")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    args = p.parse_args(argv)
    from sdar_kernels.ops import triton_logprobs as tk

    t0 = time.time()
    g = torch.Generator(device="cuda").manual_seed(0)
    h, n = args.h, args.n
    w = (torch.randn(VOCAB, h, device="cuda", generator=g) / math.sqrt(h)).bfloat16()
    scale = args.logit_scale
    hs = (scale * torch.randn(n, h, device="cuda", generator=g)).bfloat16()
    ht = (hs.float() + 0.3 * scale * torch.randn(n, h, device="cuda", generator=g)).bfloat16()
    y = torch.randint(0, VOCAB, (n,), device="cuda", generator=g)
    rate, _ = machine_rates()
    rows = []
    ref = tk.row_stats([hs, ht], w, [y, y], temperature=1.0)
    for cfg in FWD if args.only != "grad" else []:
        row = dict(launch="row_stats", **cfg)
        if time.time() - t0 > args.budget_s:
            rows.append(dict(row, error="skipped: time budget"))
            continue
        try:
            out = tk.row_stats([hs, ht], w, [y, y], temperature=1.0, **cfg)
            row["rel_err_lse"] = _rel(out[0] + out[1].log(), ref[0] + ref[1].log())
            ms = _median_ms(lambda: tk.row_stats([hs, ht], w, [y, y], temperature=1.0, **cfg))
            row.update(ms=ms, pct_floor=100 * (2 * 2 * n * h * VOCAB) / (rate * 1e12) / (ms * 1e-3))
        except Exception as exc:  # e.g. out of shared memory for a large tile
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    m, s, t, _ = ref
    lse = (m + s.log())[:n]
    ent = (s.log() - t / s)[:n]
    a = torch.randn(n, device="cuda", generator=g) / n
    b = torch.randn(n, device="cuda", generator=g) / n
    ref_dh, ref_dw = tk.grad(hs, w, y, lse, ent, a, b, temperature=1.0)
    for cfg in BWD if args.only != "row_stats" else []:
        row = dict(launch="grad", **cfg)
        if time.time() - t0 > args.budget_s:
            rows.append(dict(row, error="skipped: time budget"))
            continue
        try:
            dh, dw = tk.grad(hs, w, y, lse, ent, a, b, temperature=1.0, **cfg)
            row.update(rel_err_dh=_rel(dh, ref_dh), rel_err_dw=_rel(dw, ref_dw))
            ms = _median_ms(lambda: tk.grad(hs, w, y, lse, ent, a, b, temperature=1.0, **cfg))
            row.update(ms=ms, pct_floor=100 * (6 * n * h * VOCAB) / (rate * 1e12) / (ms * 1e-3))
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    info = dict(device=torch.cuda.get_device_name(0), matmul_tflops=rate, H=h, N=n, vocab=VOCAB, logit_scale=scale)
    stem = "tune_gpu" if scale == 1.0 else f"tune_gpu_scale{scale:g}"
    (args.out / f"{stem}.json").write_text(json.dumps(dict(machine=info, rows=rows), indent=1))
    md = [f"## Launch configurations on {info['device']} (bf16, H {h}, N {n} (+{n} teacher rows in row_stats), "
          f"V {VOCAB:,}; logit std {scale:g}; matmul {rate:.0f} TFLOP/s)", "",
          "| launch | configuration | ms | % of its floor | rel. error vs default |", "|---|---|---|---|---|"]
    for r in rows:
        cfg = ", ".join(f"{k}={v}" for k, v in r.items()
                        if k not in ("launch", "ms", "pct_floor", "rel_err_lse", "rel_err_dh", "rel_err_dw", "error"))
        if "error" in r:
            md.append(f"| {r['launch']} | {cfg} | {r['error']} | | |")
        else:
            err = r.get("rel_err_lse", max(r.get("rel_err_dh", 0), r.get("rel_err_dw", 0)))
            md.append(f"| {r['launch']} | {cfg} | {r['ms']:.1f} | {r['pct_floor']:.0f} | {err:.1e} |")
    text = "\n".join(md) + "\n"
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
