"""Compile the Triton kernels for Hopper (sm_90) on a machine without a GPU, and report what came out.

Run with TRITON_INTERPRET unset (the script removes it before importing Triton):

    python benchmarks/gpu/compile_check.py

Each line names the kernel, dtype and launch configuration, the shared memory it needs, whether the GEMM
tiles became wgmma (Hopper tensor cores), mma or plain FMA, and how many async copies the software
pipeliner emitted (0 means the loads are not pipelined). Pointers, strides and H are declared divisible
by 16, as Triton's specialisation sees them for Qwen3 shapes. Exits non-zero if a compile fails.
"""

from __future__ import annotations

import os
import re
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from sdar_kernels.ops import triton_logprobs as tk  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)

_FWD_TYPES = {
    "h0_ptr": "*{dt}", "h1_ptr": "*{dt}", "y0_ptr": "*i64", "y1_ptr": "*i64", "w_ptr": "*{dt}",
    "m_ptr": "*fp32", "s_ptr": "*fp32", "t_ptr": "*fp32", "zy_ptr": "*fp32",
    "N0": "i32", "N1": "i32", "V": "i32", "H": "i32", "vocab_start": "i32", "inv_temp": "fp32",
    "stride_h0": "i32", "stride_h1": "i32", "stride_w": "i32", "tiles_per_split": "i32",
}
_BWD_TYPES = {
    "h_ptr": "*{dt}", "w_ptr": "*{dt}", "y_ptr": "*i64", "lse_ptr": "*fp32", "ent_ptr": "*fp32",
    "a_ptr": "*fp32", "b_ptr": "*fp32", "dh_ptr": "*fp32", "dw_ptr": "*fp32",
    "N": "i32", "V": "i32", "H": "i32", "vocab_start": "i32", "inv_temp": "fp32", "skip_threshold": "fp32",
    "stride_h": "i32", "stride_w": "i32", "stride_dh": "i32", "stride_dw": "i32",
}
_DZ_TYPES = {
    "h_ptr": "*{dt}", "w_ptr": "*{dt}", "y_ptr": "*i64", "lse_ptr": "*fp32", "ent_ptr": "*fp32",
    "a_ptr": "*fp32", "b_ptr": "*fp32", "dz_ptr": "*{dt}",
    "N": "i32", "V": "i32", "H": "i32", "vocab_start": "i32", "inv_temp": "fp32",
    "stride_h": "i32", "stride_w": "i32", "stride_dz": "i32",
}


def _compile(fn, types: dict, consts: dict, dt: str, num_warps: int, num_stages: int):
    names = fn.arg_names
    sig = {n: ("constexpr" if n in consts else types[n].format(dt=dt)) for n in names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
               if n not in consts and (sig[n].startswith("*") or n.startswith("stride") or n == "H")}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                    attrs=aligned)
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})


def _describe(kernel) -> str:
    ptx, ttgir = kernel.asm["ptx"], kernel.asm["ttgir"]
    atomics = "yes" if re.search(r"\b(atom|red)\.global", ptx) else "no"
    mma = "wgmma" if "wgmma" in ptx else ("mma" if "mma.sync" in ptx else "fma")
    return (f"shared {kernel.metadata.shared // 1024} KiB, {mma}, async copies {ttgir.count('async_copy')}, "
            f"atomics {atomics}")


def main() -> int:
    fwd = [("bf16", tk._FWD_CUDA), ("fp16", tk._FWD_CUDA), ("fp32", tk._FWD_CUDA_FP32)]
    bwd = [("bf16", tk._BWD_CUDA, {}), ("bf16", tk._BWD_CUDA, dict(HAS_B=False, NEED_DW=False, SKIP=True)),
           ("fp16", tk._BWD_CUDA, {}), ("fp32", tk._BWD_CUDA_FP32, {})]
    failed = 0
    for dt, cfg in fwd:
        consts = dict(BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"], UPCAST=False,
                      DOT_PRECISION="ieee")
        t0 = time.time()
        try:
            k = _compile(tk._row_stats_kernel, _FWD_TYPES, consts, dt, cfg["num_warps"], cfg["num_stages"])
            print(f"row_stats {dt} {cfg}: ok in {time.time() - t0:.1f}s; {_describe(k)}")
        except Exception as exc:  # report every failure, then exit non-zero
            failed += 1
            print(f"row_stats {dt} {cfg}: FAILED {type(exc).__name__}: {exc}")
    for dt, cfg, flags in bwd:
        consts = dict(BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"],
                      GROUP_M=cfg["group_m"], HAS_B=True, NEED_DH=True, NEED_DW=True, SKIP=False, UPCAST=False,
                      DOT_PRECISION="ieee")
        consts.update(flags)
        t0 = time.time()
        try:
            k = _compile(tk._grad_kernel, _BWD_TYPES, consts, dt, cfg["num_warps"], cfg["num_stages"])
            print(f"grad {dt} {cfg} {flags}: ok in {time.time() - t0:.1f}s; {_describe(k)}")
        except Exception as exc:
            failed += 1
            print(f"grad {dt} {cfg} {flags}: FAILED {type(exc).__name__}: {exc}")
    for dt, cfg in [("bf16", tk._DZ_CUDA), ("fp16", tk._DZ_CUDA), ("fp32", tk._BWD_CUDA_FP32)]:
        consts = dict(BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"],
                      GROUP_M=cfg["group_m"], HAS_B=True, UPCAST=False, DOT_PRECISION="ieee")
        t0 = time.time()
        try:
            k = _compile(tk._dz_kernel, _DZ_TYPES, consts, dt, cfg["num_warps"], cfg["num_stages"])
            print(f"dz (workspace) {dt} {cfg}: ok in {time.time() - t0:.1f}s; {_describe(k)}")
        except Exception as exc:
            failed += 1
            print(f"dz (workspace) {dt} {cfg}: FAILED {type(exc).__name__}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
