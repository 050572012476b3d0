"""Flop and byte floors of the SDAR loss (forward + backward) at Qwen3 LM-head shapes, as a Markdown table.

    python benchmarks/gpu/floors.py                       # H100 SXM and H200 peaks, to stdout
    python benchmarks/gpu/floors.py --tflops 790 --tbps 4.8 --out benchmarks/results/floors_h200.md

N student tokens plus N teacher tokens, hidden H, vocabulary V, bf16 inputs (docs/GPU_NOTES.md derives
the constants):

* flops: forward student + teacher logits (2 GEMMs), backward recompute of the student logits, dh and dW
  (3 GEMMs): 5 GEMMs of 2*N*H*V each = 10*N*H*V.
* bytes (each pass reads its inputs once and writes its outputs once): forward h_S, h_T, W in bf16
  (4NH + 2VH), backward h_S and W again and dh out in bf16 (4NH + 2VH), dW out in fp32 (4VH):
  8*N*H + 8*V*H bytes, plus O(N) statistics.
* the atomic traffic of the current fused backward (one program per 128 x 128 tile of rows x vocabulary,
  fp32 atomic adds of its dh and dW partials): 4*N*H*ceil(V/BN) + 4*V*H*ceil(N/BM) bytes of
  read-modify-write. Compare with the byte floor: where it dominates, the tile order must keep those
  partials in L2 or the backward should use a workspace (see docs/GPU_NOTES.md).

The floor time is max(flops / matmul rate, bytes / bandwidth); pass the *measured* bf16 matmul rate
(METHOD.md: measure it first) rather than the datasheet peak when one is available.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

DEVICES = {
    # name: (dense bf16 matmul TFLOP/s, HBM TB/s) datasheet peaks
    "H100 SXM": (990.0, 3.35),
    "H200": (990.0, 4.8),
}
HIDDEN = {"Qwen3-1.7B": 2048, "Qwen3-8B": 4096, "Qwen3-14B": 5120}
VOCAB = 151_936
TOKENS = (4096, 8192, 16384)


def flops(n: int, h: int, v: int) -> float:
    """SDAR loss, forward + backward, N student + N teacher rows, recomputing backward: 10 N H V."""
    return 10.0 * n * h * v


def floor_bytes(n: int, h: int, v: int) -> float:
    """Unavoidable HBM traffic with bf16 inputs and an fp32 dW: 8 N H + 8 V H (+ O(N))."""
    return 8.0 * n * h + 8.0 * v * h + 64.0 * n


def atomic_bytes(n: int, h: int, v: int, block_m: int = 128, block_n: int = 128) -> float:
    """fp32 read-modify-write of the CCE-style backward's dh and dW partials (one per tile)."""
    return 4.0 * n * h * math.ceil(v / block_n) + 4.0 * v * h * math.ceil(n / block_m)


def table(tflops: float, tbps: float, device: str) -> str:
    lines = [
        f"### Floors on {device}: {tflops:g} TFLOP/s bf16 matmul, {tbps:g} TB/s (V = {VOCAB:,}, N student + N teacher)",
        "",
        "| model (H) | N | TFLOP (10·N·H·V) | flop floor ms | GB floor | byte floor ms | floor ms | "
        "60 % goal ms | atomic RMW GB (128×128) | atomic ms at HBM rate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, h in HIDDEN.items():
        for n in TOKENS:
            f = flops(n, h, VOCAB)
            b = floor_bytes(n, h, VOCAB)
            a = atomic_bytes(n, h, VOCAB)
            t_f = f / (tflops * 1e12) * 1e3
            t_b = b / (tbps * 1e12) * 1e3
            t = max(t_f, t_b)
            lines.append(
                f"| {model} ({h}) | {n:,} | {f / 1e12:.1f} | {t_f:.1f} | {b / 1e9:.2f} | {t_b:.2f} | {t:.1f} | "
                f"{t / 0.6:.1f} | {a / 1e9:.0f} | {a / (tbps * 1e12) * 1e3:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tflops", type=float, help="bf16 matmul rate in TFLOP/s (e.g. the measured one)")
    parser.add_argument("--tbps", type=float, help="memory bandwidth in TB/s")
    parser.add_argument("--device", default=None, help="label for the table")
    parser.add_argument("--out", type=Path, help="write the Markdown here as well")
    args = parser.parse_args(argv)
    if args.tflops or args.tbps:
        if not (args.tflops and args.tbps):
            parser.error("--tflops and --tbps go together")
        text = table(args.tflops, args.tbps, args.device or "the given device")
    else:
        text = "\n".join(table(f, b, name) for name, (f, b) in DEVICES.items())
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
