"""Largest Qwen3 LM head whose SDAR loss fits at 16k + 16k tokens on one 80 GB GPU, from GPU-measured memory.

    python3 benchmarks/gpu/fit_table.py benchmarks/results/gpu_h200/run2_gpu_full.json --out benchmarks/results/fit_h200.md

Reads bench_gpu.py's JSON (peak extra memory beyond inputs and returned gradients, per provider and (H, N)),
fits each provider's extra memory as a + b·(2N·V) + c·(V·H) by least squares over the measured shapes (the
naive path grows with the logits, ours with the fp32 dW accumulator), then adds what every provider holds:
the inputs (W, h_S, h_T in bf16) and the returned gradients (dh, dW in bf16).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

VOCAB = 151_936
BUDGET = 80e9
TOKENS = 16_384
PROVIDERS = {"materialised": "materialised (bf16 GEMM -> fp32 log-softmax)", "sk-triton": "ours, Triton (workspace)",
             "sk-triton-two_pass": "ours, Triton (two_pass)"}


def fit(rows, provider):
    pts = [r for r in rows if r["provider"] == provider and "peak_extra_mib" in r]
    a = np.array([[1.0, 2 * r["N"] * VOCAB, VOCAB * r["H"]] for r in pts])
    y = np.array([r["peak_extra_mib"] * 2**20 for r in pts])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    worst = float(np.max(np.abs(a @ coef - y) / y)) if len(pts) else float("nan")
    return coef, len(pts), worst


def total_bytes(coef, h, v, n):
    extra = coef[0] + coef[1] * 2 * n * v + coef[2] * v * h
    held = 2 * v * h + 2 * 2 * n * h + 2 * n * h + 2 * v * h  # W, h_S + h_T; dh, dW (bf16)
    return extra + held


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    data = json.loads(args.results.read_text())
    rows, machine = data["rows"], data["machine"]
    lines = [f"## Largest Qwen3 head whose SDAR loss fits at {TOKENS:,} + {TOKENS:,} tokens on one 80 GB GPU", "",
             f"From memory measured on an {machine['device']} (`{args.results}`; torch {machine['torch']}): each "
             "provider's peak extra memory fitted as a + b·(2N·V) + c·(V·H) over the measured shapes, plus inputs "
             "(W, h_S, h_T) and returned gradients (dh, dW) in bf16. Budget 80 × 10⁹ bytes for the loss alone.", "",
             "| provider | shapes fitted | worst fit error | bytes per (row·V) | bytes per (V·H) | fixed MiB |",
             "|---|---|---|---|---|---|"]
    coefs = {}
    for key, name in PROVIDERS.items():
        coef, count, worst = fit(rows, key)
        if count < 3:
            continue
        coefs[key] = coef
        lines.append(f"| {name} | {count} | {100 * worst:.1f} % | {coef[1]:.2f} | {coef[2]:.2f} | {coef[0] / 2**20:.0f} |")
    lines += ["", "| H | provider | GB at V = 151,936 | fits in 80 GB | largest V that fits | largest N (+ N) at V = 151,936 |",
              "|---|---|---|---|---|---|"]
    for h in (5120, 8192):
        for key, coef in coefs.items():
            gb = total_bytes(coef, h, VOCAB, TOKENS) / 1e9
            per_v = total_bytes(coef, h, 1, TOKENS) - total_bytes(coef, h, 0, TOKENS)
            largest = int((BUDGET - total_bytes(coef, h, 0, TOKENS)) // per_v)
            per_n = total_bytes(coef, h, VOCAB, 1) - total_bytes(coef, h, VOCAB, 0)
            largest_n = int((BUDGET - total_bytes(coef, h, VOCAB, 0)) // per_n)
            lines.append(f"| {h} | {PROVIDERS[key]} | {gb:.1f} | {'yes' if gb * 1e9 <= BUDGET else 'no'} | {largest:,} | "
                         f"{largest_n:,} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
