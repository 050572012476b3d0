"""Inputs and providers of the kernel benchmarks (shared by the pytest file and the memory child).

Loss kinds: "logprobs" (fused_logprobs of the student rows, per-token upstream gradient),
"sdar" (sdar_loss, student + teacher rows), "grpo" (grpo_sdar_loss: PG + λ·SDAR, student +
teacher rows). Providers: the impl strings ("naive", "chunked", "triton"; "forward_grad" for the
two losses) and external baselines doing the closest public work: Liger's LigerFusedLinearGRPOLoss
with its reference branch fed the teacher hidden states (grpo), LigerFusedLinearJSDLoss with β = 1
(sdar), Cut Cross-Entropy per-token NLL (logprobs).
"""

from __future__ import annotations

import os

import torch

import sdar_kernels as sk

SETS = {
    "cpu": dict(n=2048, h=1024, v=32768, seq_len=256, dtype="float32"),
    "quick": dict(n=256, h=256, v=4096, seq_len=64, dtype="float32"),
    "gpu": dict(n=8192, h=4096, v=151936, seq_len=1024, dtype="bfloat16"),
}
LOSSES = ("logprobs", "sdar", "grpo")
MODES = ("forward", "backward", "full")
EXTERNAL = {"grpo": ["liger_grpo"], "sdar": ["liger_jsd"], "logprobs": ["cce"]}


def bench_set(device: torch.device) -> str:
    """SDAR_BENCH_SET if set ("quick", "cpu", "gpu"), else "gpu" on CUDA and "cpu" elsewhere."""
    name = os.environ.get("SDAR_BENCH_SET") or ("gpu" if device.type == "cuda" else "cpu")
    if name not in SETS:
        raise ValueError(f"SDAR_BENCH_SET={name!r}; expected one of {sorted(SETS)}")
    return name


def providers(loss: str, device: torch.device) -> list[str]:
    impls = ["naive", "chunked"] + (["triton"] if device.type == "cuda" else [])
    if loss != "logprobs":  # log-probs alone have no loss to differentiate in the forward
        impls.append("forward_grad")
    return impls + EXTERNAL[loss]


def make_inputs(shape: dict, device: torch.device, seed: int = 0) -> dict:
    """Student/teacher hidden (N, H), head (V, H) (both trainable), labels, (B, T) views, advantages."""
    g = torch.Generator().manual_seed(seed)
    n, h, v, t = shape["n"], shape["h"], shape["v"], shape["seq_len"]
    dtype = getattr(torch, shape["dtype"])
    student = torch.randn(n, h, generator=g).div_(h ** 0.25).to(device=device, dtype=dtype)
    teacher = (student.float() + 0.3 * torch.randn(n, h, generator=g).to(device)).to(dtype)
    weight = (torch.randn(v, h, generator=g) / h ** 0.5).to(device=device, dtype=dtype)
    labels = torch.randint(0, v, (n,), generator=g).to(device)
    b = n // t
    return dict(student=student.requires_grad_(), teacher=teacher, weight=weight.requires_grad_(), labels=labels,
                advantages=torch.randn(b, generator=g).to(device), upstream=torch.randn(n, generator=g).to(device),
                mask=torch.ones(b, t, device=device), b=b, t=t)


def loss_fn(loss: str, provider: str, x: dict, device: torch.device):
    """A zero-argument callable computing the scalar loss of (loss, provider) on inputs x.

    Raises RuntimeError("not available: ...") when an external provider cannot run here.
    """
    b, t, h = x["b"], x["t"], x["student"].shape[1]
    if provider in sk.IMPLS:
        if loss == "logprobs":
            return lambda: (sk.fused_logprobs(x["student"], x["weight"], x["labels"], impl=provider)[0]
                            * x["upstream"]).sum()
        if loss == "sdar":
            return lambda: sk.sdar_loss(x["student"], x["teacher"], x["weight"], x["labels"], impl=provider).loss
        return lambda: sk.grpo_sdar_loss(
            x["student"].view(b, t, h), x["teacher"].view(b, t, h), x["weight"], x["labels"].view(b, t),
            x["advantages"], sdar_coef=0.01, impl=provider)[0]
    try:
        if provider == "liger_grpo":
            from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
            # Same work: student PG pass + a no-grad pass of the "reference" rows (our teacher rows)
            # through the same head, k3 KL between them (β = 0.01).
            mod = LigerFusedLinearGRPOLoss(beta=0.01, use_ref_model=True, compiled=device.type == "cuda",
                                           loss_type="dapo", chunk_size=1)
            return lambda: mod(x["student"].view(b, t, h), x["weight"], x["labels"].view(b, t), x["mask"],
                               x["advantages"], ref_input=x["teacher"].view(b, t, h), ref_weight=x["weight"])[0]
        if provider == "liger_jsd":
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
            mod = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=1.0,
                                          compiled=device.type == "cuda")
            return lambda: mod(x["student"], x["weight"], x["teacher"], x["weight"], x["labels"])
        if provider == "cce":
            from cut_cross_entropy import linear_cross_entropy
            impl = "cce" if device.type == "cuda" else "torch_compile"
            return lambda: (-linear_cross_entropy(x["student"], x["weight"], x["labels"], reduction="none",
                                                  impl=impl) * x["upstream"]).sum()
    except Exception as exc:  # noqa: BLE001 - any failure to set up an external baseline is reported
        raise RuntimeError(f"not available: {type(exc).__name__}: {exc}") from exc
    raise ValueError(f"unknown provider {provider!r}")


def grad_bytes(x: dict) -> int:
    """Bytes of the gradients every provider must return (d student hidden, d head)."""
    return sum(t.numel() * t.element_size() for t in (x["student"], x["weight"]))


def input_bytes(x: dict) -> int:
    return sum(t.numel() * t.element_size() for t in x.values() if isinstance(t, torch.Tensor))
