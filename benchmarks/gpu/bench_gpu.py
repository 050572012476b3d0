"""GPU benchmark of the SDAR loss at Qwen3 LM-head shapes: time (forward, backward, full) and peak memory.

    python3 benchmarks/gpu/bench_gpu.py --set quick --out benchmarks/results/gpu     # H 4096, N 8k + 8k
    python3 benchmarks/gpu/bench_gpu.py --set full  --out benchmarks/results/gpu     # H 2048/4096/5120 x N 4k/8k/16k
    python3 benchmarks/gpu/bench_gpu.py --shapes 4096x8192 --logit-scale 4        # chosen shapes, peaked logits

Providers (each skipped with its reason when it cannot run):
  materialised   bf16 GEMM logits -> fp32 log-softmax (student with grad, teacher under no_grad): the naive
                 PyTorch path the issue compares against
  sk-naive, sk-chunked, sk-triton, sk-forward_grad   sdar_kernels.sdar_loss(impl=...) (the public API;
                 -1g, -4g: chunk_bytes 1 GiB, 4 GiB instead of the 2 GiB default)
  grpo-triton, grpo-forward_grad   sdar_kernels.grpo_sdar_loss(impl=...): PG + entropy + λ·SDAR (the training
                 objective; per-sequence advantages over 1024-token sequences)
  launchers-workspace, launchers-atomic, launchers-atomic-skip   the Triton launchers alone: row_stats over
                 student + teacher rows, grad for the student rows (the kernel cost without the loss glue)
  proto-fwdgrad-*   a prototype, not in the package: the gradient formed in the forward per token chunk
                 (cuBLAS logits + a PyTorch row epilogue, eager or torch.compile'd; 8·N·H·V flops, no recompute)
  liger-grpo     LigerFusedLinearGRPOLoss with the teacher as its reference branch
  liger-jsd      LigerFusedLinearJSDLoss, beta = 1 (soft loss only)
  cce            cut_cross_entropy.linear_cross_entropy, per-token NLL of the student rows only
Time: median of CUDA-event timings after warm-up; backward = full - forward. Memory: max_memory_allocated
during one full step minus the inputs and the returned gradients (dh, fp32-or-bf16 dW). Also measures the
bf16 matmul rate and copy bandwidth and prints the flop floor (10 N H V) with them.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
import floors  # noqa: E402

VOCAB = 151_936
SETS = {
    "quick": [(4096, 8192)],
    # the quick shape and the extremes first, so a time budget that stops early keeps the most telling cases
    "full": [(4096, 8192), (5120, 16384), (2048, 4096), (2048, 16384), (5120, 4096), (4096, 16384),
             (2048, 8192), (5120, 8192), (4096, 4096)],
}
# Liger's chunked losses are torch.compile'd on first use of each shape (tens of seconds): measured on the
# first --liger-shapes shapes only, so one run on a lent card fits its time.
LIGER = ("liger-grpo", "liger-jsd")


# ------------------------------------------------------------------------------------------------ providers
def _sdar_terms(logp_s, logp_t, beta=5.0):
    """Published SDAR objective on given log-probs: gate sigma(beta * gap), token mean."""
    gap = (logp_t - logp_s).detach()
    gate = torch.sigmoid(beta * gap)
    return (gate * (logp_t.detach() - logp_s)).mean()


def materialised(hs, ht, w, y):
    logits = (hs @ w.T).float()
    logp_s = torch.log_softmax(logits, dim=-1).gather(1, y[:, None])[:, 0]
    with torch.no_grad():
        logp_t = torch.log_softmax((ht @ w.T).float(), dim=-1).gather(1, y[:, None])[:, 0]
    return _sdar_terms(logp_s, logp_t)


def sk_impl(impl, **options):
    import sdar_kernels as sk

    def run(hs, ht, w, y):
        return sk.sdar_loss(hs, ht, w, y, impl=impl, **options).loss
    return run


def sk_grpo(impl):
    """The training objective grpo_sdar_loss: PG (per-sequence advantages over 1024-token sequences) +
    entropy bonus 0.001 + λ 0.01 · SDAR, on-policy (no behaviour log-probs), no KL."""
    import sdar_kernels as sk

    def run(hs, ht, w, y):
        t = min(1024, hs.shape[0])
        b = hs.shape[0] // t
        adv = _cached(("advantages", b), lambda: torch.randn(b, device=hs.device))
        return sk.grpo_sdar_loss(hs.view(b, t, -1), ht.view(b, t, -1), w, y.view(b, t), adv, entropy_coef=1e-3,
                                 sdar_coef=0.01, impl=impl)[0]
    return run


class _Launchers(torch.autograd.Function):
    """row_stats over student + teacher rows, grad for the student rows (logp and entropy coefficients)."""

    @staticmethod
    def forward(ctx, hs, ht, w, y, options):
        from sdar_kernels.ops import triton_logprobs as tk
        n = hs.shape[0]
        m, s, t, zy = tk.row_stats([hs, ht], w, [y, y], temperature=1.0)
        lse = m + torch.log(s)
        ent = torch.log(s) - t / s
        logp = zy - lse
        ctx.save_for_backward(hs, w, y, lse[:n], ent[:n])
        ctx.options = options
        return logp[:n], logp[n:], ent[:n]

    @staticmethod
    def backward(ctx, g_logp_s, g_logp_t, g_ent):
        from sdar_kernels.ops import triton_logprobs as tk
        hs, w, y, lse, ent = ctx.saved_tensors
        g_ent = None if g_ent is None else g_ent.float()
        dh, dw = tk.grad(hs, w, y, lse, ent, g_logp_s.float(), g_ent, temperature=1.0,
                         need_hidden_grad=ctx.needs_input_grad[0], need_weight_grad=ctx.needs_input_grad[2],
                         **ctx.options)
        return dh, None, None if dw is None else dw.to(w.dtype), None, None


def launchers(**options):
    def run(hs, ht, w, y):
        logp_s, logp_t, ent_s = _Launchers.apply(hs, ht.detach(), w, y, options)
        return _sdar_terms(logp_s, logp_t) - 1e-3 * ent_s.mean()
    return run


def _sdar_epilogue(zs, zt, label, beta: float, n: int):
    """Row epilogue of the forward-gradient prototype: from a chunk's student and teacher logits, the summed
    gated gap and dz = gate/N·(p − onehot) (the published loss's gradient w.r.t. the student logits)."""
    zs, zt = zs.float(), zt.float()
    logp_t = zt.gather(1, label) - torch.logsumexp(zt, dim=-1, keepdim=True)
    lse = torch.logsumexp(zs, dim=-1, keepdim=True)
    gap = logp_t - (zs.gather(1, label) - lse)
    gate = torch.sigmoid(beta * gap)
    coef = gate / n  # the loss's derivative w.r.t. logp_s is -coef; d logp_s / dz = onehot - p
    dz = (torch.exp(zs - lse) * coef).scatter_add(1, label, -coef)
    return (gate * gap).sum(), dz


class _ForwardGrad(torch.autograd.Function):
    """Prototype, not in the package: the published SDAR loss with its gradient formed in the forward, a token
    chunk at a time (8·N·H·V flops, no recompute): cuBLAS logits for the chunk's student and teacher rows, the
    row epilogue (eager or torch.compile'd), then dh = dz·W and dW += dzᵀ·h; the backward only scales the
    stored gradients. Memory: the chunk's [c, V] logits and epilogue temporaries, and an fp32 dW."""

    @staticmethod
    def forward(ctx, hs, ht, w, y, chunk, beta, epilogue):
        n = hs.shape[0]
        dh = torch.empty_like(hs)
        dw = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        total = torch.zeros((), dtype=torch.float32, device=hs.device)
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            h = hs[rows]
            part, dz = epilogue(h @ w.T, ht[rows] @ w.T, y[rows, None], beta, n)
            total += part
            dz = dz.to(w.dtype)
            dh[rows] = dz @ w
            dw += dz.T @ h
        ctx.save_for_backward(dh, dw)
        ctx.weight_dtype = w.dtype
        return total / n

    @staticmethod
    def backward(ctx, g):
        dh, dw = ctx.saved_tensors
        return dh * g.to(dh.dtype), None, (dw * g).to(ctx.weight_dtype), None, None, None, None


def forward_grad(chunk, compiled=False):
    def run(hs, ht, w, y):
        epilogue = _sdar_epilogue
        if compiled:
            epilogue = _cached("compiled_epilogue", lambda: torch.compile(_sdar_epilogue, dynamic=False))
        return _ForwardGrad.apply(hs, ht.detach(), w, y, chunk, 5.0, epilogue)
    return run


def liger_grpo(hs, ht, w, y):
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    b = max(1, hs.shape[0] // 1024)
    t = hs.shape[0] // b
    loss_fn = _cached("liger_grpo", lambda: LigerFusedLinearGRPOLoss(beta=0.04, use_ref_model=True))
    adv = torch.ones(b, device=hs.device)
    out = loss_fn(hs.view(b, t, -1), w, y.view(b, t), torch.ones(b, t, device=hs.device), adv,
                  ref_input=ht.view(b, t, -1), ref_weight=w.detach())
    return out[0] if isinstance(out, tuple) else out


def liger_jsd(hs, ht, w, y):
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    loss_fn = _cached("liger_jsd", lambda: LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0,
                                                                   beta=1.0))
    out = loss_fn(hs, w, ht, w.detach(), y)
    return out[0] if isinstance(out, tuple) else out


def cce(hs, ht, w, y):
    from cut_cross_entropy import linear_cross_entropy
    return linear_cross_entropy(hs, w, y, reduction="none").mean()


_CACHE: dict = {}
PROVIDER_ENV = {"sk-triton-two_pass": {"SDAR_TRITON_BACKWARD": "two_pass"}}


def _first_line(exc: BaseException, limit: int) -> str:
    lines = str(exc).splitlines()
    return (lines[0] if lines else "")[:limit]


def _cached(key, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


PROVIDERS = {
    "materialised": materialised,
    "sk-naive": sk_impl("naive"),
    "sk-chunked": sk_impl("chunked"),
    "sk-triton": sk_impl("triton"),
    "sk-forward_grad": sk_impl("forward_grad"),
    "sk-forward_grad-1g": sk_impl("forward_grad", chunk_bytes=2**30),
    "sk-forward_grad-4g": sk_impl("forward_grad", chunk_bytes=2**32),
    "grpo-triton": sk_grpo("triton"),
    "grpo-forward_grad": sk_grpo("forward_grad"),
    "sk-triton-two_pass": sk_impl("triton"),  # with SDAR_TRITON_BACKWARD=two_pass (PROVIDER_ENV)
    "launchers-workspace": launchers(strategy="workspace"),
    "launchers-two_pass": launchers(strategy="two_pass"),
    "launchers-atomic": launchers(strategy="atomic"),
    "launchers-atomic-skip": launchers(strategy="atomic", skip_threshold=2.0**-14),
    "proto-fwdgrad-1024": forward_grad(1024),
    "proto-fwdgrad-4096": forward_grad(4096),
    "proto-fwdgrad-1024-compiled": forward_grad(1024, compiled=True),
    "proto-fwdgrad-2048-compiled": forward_grad(2048, compiled=True),
    "proto-fwdgrad-4096-compiled": forward_grad(4096, compiled=True),
    "liger-grpo": liger_grpo,
    "liger-jsd": liger_jsd,
    "cce": cce,
}


# ------------------------------------------------------------------------------------------------- measuring
def _events_ms(fn, reps):
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_inputs(h, n, vocab, dtype, dev, logit_scale=1.0):
    """Random head and hidden states; logits have standard deviation ``logit_scale`` (1: nearly uniform
    softmax; 3-5: peaked like a trained LM's, which is what the backward tile skip needs)."""
    g = torch.Generator(device=dev).manual_seed(0)
    w = (torch.randn(vocab, h, device=dev, generator=g) / math.sqrt(h)).to(dtype).requires_grad_()
    hs = (logit_scale * torch.randn(n, h, device=dev, generator=g)).to(dtype).requires_grad_()
    ht = (hs.detach() + 0.3 * logit_scale * torch.randn(n, h, device=dev, generator=g).to(dtype))
    y = torch.randint(0, vocab, (n,), device=dev, generator=g)
    return hs, ht, w, y


def smoke(vocab=300, h=32, n=64) -> int:
    """CPU check of every provider's code path at a toy shape (Triton through the interpreter). The
    forward-gradient prototype's values are checked against fp64 in tests/test_bench_gpu_prototype.py."""
    failures = 0
    for name, fn in PROVIDERS.items():
        hs, ht, w, y = make_inputs(h, n, vocab, torch.float32, torch.device("cpu"))
        try:
            fn(hs, ht, w, y).backward()
            ok = hs.grad is not None and torch.isfinite(hs.grad).all() and w.grad is not None
            print(f"smoke {name}: {'ok' if ok else 'NO GRADIENT'}")
            failures += not ok
        except Exception as exc:
            print(f"smoke {name}: {type(exc).__name__}: {_first_line(exc, 150)}")
    return 1 if failures else 0


def measure(provider, h, n, reps, warmup, dtype=torch.bfloat16, logit_scale=1.0):
    hs, ht, w, y = make_inputs(h, n, VOCAB, dtype, torch.device("cuda"), logit_scale)
    fn = PROVIDERS[provider]
    import os
    os.environ.pop("SDAR_TRITON_BACKWARD", None)
    os.environ.update(PROVIDER_ENV.get(provider, {}))

    def forward():
        return fn(hs, ht, w, y)

    def full():
        hs.grad = None
        w.grad = None
        forward().backward()

    for _ in range(warmup):
        full()
    torch.cuda.synchronize()
    hs.grad = w.grad = None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    full()
    torch.cuda.synchronize()
    grads = sum(x.grad.numel() * x.grad.element_size() for x in (hs, w) if x.grad is not None)
    peak_extra = torch.cuda.max_memory_allocated() - base - grads
    fwd_ms = _events_ms(forward, reps)
    full_ms = _events_ms(full, reps)
    return dict(forward_ms=fwd_ms, backward_ms=full_ms - fwd_ms, full_ms=full_ms,
                peak_extra_mib=peak_extra / 2**20)


def machine_rates():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    ms = _events_ms(lambda: a @ b, 10)
    tflops = 2 * 8192**3 / (ms * 1e-3) / 1e12
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    ms = _events_ms(lambda: y.copy_(x), 10)
    tbps = 2 * x.numel() / (ms * 1e-3) / 1e12
    return tflops, tbps


def write_results(rows, info, out: Path, stem: str) -> str:
    """JSON (machine + rows) and a Markdown table under ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(dict(machine=info, rows=rows), indent=1))
    md = [f"## SDAR loss on {info['device']} (bf16, V = {VOCAB:,}, N student + N teacher)", "",
          f"torch {info['torch']}, triton {info['triton']}; measured bf16 matmul {info['matmul_tflops']:.0f} "
          f"TFLOP/s, copy {info['copy_tbps']:.2f} TB/s; logit std {info.get('logit_scale', 1.0):g}; "
          "floor = 10·N·H·V at the measured rate; backward = full - forward; "
          "peak extra = max allocated minus inputs and returned gradients.", "",
          "| provider | H | N | forward ms | backward ms | full ms | % of floor | peak extra MiB |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['provider']} | {r['H']} | {r['N']} | {r['error']} | | | | |")
        else:
            md.append(f"| {r['provider']} | {r['H']} | {r['N']} | {r['forward_ms']:.1f} | {r['backward_ms']:.1f} | "
                      f"{r['full_ms']:.1f} | {r['pct_of_floor']:.0f} | {r['peak_extra_mib']:.0f} |")
    text = "\n".join(md) + "\n"
    (out / f"{stem}.md").write_text(text)
    return text


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(v) for v in shape.split("x")) for shape in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(shape) != 2 or min(shape) < 1 for shape in shapes):
        raise argparse.ArgumentTypeError(f"expected HxN[,HxN...] with positive H, N (e.g. 4096x8192), got {text!r}")
    return shapes


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=sorted(SETS), default="quick")
    parser.add_argument("--shapes", type=_shapes, help="HxN,... instead of --set (e.g. 5120x8192,4096x4096)")
    parser.add_argument("--logit-scale", type=_positive, default=1.0, help="standard deviation of the logits")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated subset")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new cases after this")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    parser.add_argument("--liger-shapes", type=int, default=2, help="measure Liger on the first N shapes only")
    parser.add_argument("--smoke", action="store_true", help="CPU code-path check at a toy shape, no timing")
    args = parser.parse_args(argv)
    if args.smoke:
        return smoke()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    t_start = time.time()
    import triton

    props = torch.cuda.get_device_properties(0)
    tflops, tbps = machine_rates()
    info = dict(device=props.name, sms=props.multi_processor_count, torch=torch.__version__,
                triton=triton.__version__, python=platform.python_version(), matmul_tflops=tflops,
                copy_tbps=tbps, vocab=VOCAB, dtype="bfloat16", logit_scale=args.logit_scale)
    print(f"# {props.name}: measured bf16 matmul {tflops:.0f} TFLOP/s, copy {tbps:.2f} TB/s", flush=True)
    shapes, name = (args.shapes, "gpu_shapes") if args.shapes else (SETS[args.set], f"gpu_{args.set}")
    if args.logit_scale != 1.0:
        name += f"_scale{args.logit_scale:g}"
    rows = []
    for shape_index, (h, n) in enumerate(shapes):
        floor_ms = floors.flops(n, h, VOCAB) / (tflops * 1e12) * 1e3
        for provider in args.providers.split(","):
            row = dict(provider=provider, H=h, N=n, floor_ms=floor_ms)
            if time.time() - t_start > args.budget_s:
                row["error"] = "skipped: time budget"
            elif provider in LIGER and shape_index >= args.liger_shapes:
                row["error"] = "skipped: Liger measured on the first shapes only"
            else:
                try:
                    row.update(measure(provider, h, n, args.reps, args.warmup, logit_scale=args.logit_scale))
                    row["pct_of_floor"] = 100.0 * floor_ms / row["full_ms"]
                except Exception as exc:  # one failing provider must not stop the table
                    row["error"] = f"{type(exc).__name__}: {_first_line(exc, 120)}"
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_results(rows, info, args.out, name)  # keep what is done if killed later
    print(write_results(rows, info, args.out, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
