"""A whole GRPO + λ·SDAR training step of a Qwen3-architecture model: our fused loss vs the materialised one.

    python3 benchmarks/gpu/train_step_gpu.py --models 1.7b,8b-lora --out benchmarks/results/gpu
    python3 benchmarks/gpu/train_step_gpu.py --smoke          # CPU code-path check with a toy config

One step = student forward with gradient (gradient checkpointing on) over prompt + response, teacher forward
under no_grad over the skill-prefixed prompt + the same response, loss on the response tokens, backward,
AdamW step. Random weights (memory and speed do not depend on them), bf16 parameters and optimizer states.
Loss paths, both giving pg + λ·SDAR on the same response tokens:
  fused         sdar_kernels.sdar_loss(impl=...) on the final hidden states and the LM-head weight
                (student_logp carries the policy-gradient term through the same recomputing backward)
  materialised  bf16 logits [tokens, V] -> fp32 log_softmax -> gather (student with grad, teacher no_grad)
Measured per (model, loss path, response tokens): peak max_memory_allocated over a step (after a warm-up step,
so optimizer states exist), tokens/s over timed steps. The largest response-token count that fits is
extrapolated linearly from the two measured token counts to the card's memory (marked "extrapolated").
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

VOCAB = 151_936
MODELS = {
    # Qwen3 configs (hidden, intermediate, layers, heads, kv heads, head_dim, tied embeddings), LoRA or full.
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, lora=False),
    "8b-lora": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, lora=True),
    "toy": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32, tie_word_embeddings=True, lora=False),
}
LAMBDA, CLIP = 0.01, 0.2


def build(name: str, vocab: int, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    spec = dict(MODELS[name])
    lora = spec.pop("lora")
    cfg = Qwen3Config(vocab_size=vocab, max_position_embeddings=8192, rms_norm_eps=1e-6, **spec)
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg).to(dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    return model


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _policy_term(logp, adv):
    """Clipped surrogate on the sampled tokens (ratio 1 on-policy; its gradient is -adv · ∇logp)."""
    ratio = torch.exp(logp - logp.detach())
    return -torch.minimum(ratio * adv, ratio.clamp(1 - CLIP, 1 + CLIP) * adv).mean()


def loss_fused(h_s, h_t, w, labels, adv, impl):
    import sdar_kernels as sk
    out = sk.sdar_loss(h_s, h_t, w, labels, impl=impl)
    return _policy_term(out.student_logp, adv) + LAMBDA * out.loss


def loss_materialised(h_s, h_t, w, labels, adv, impl=None):
    logp_s = torch.log_softmax((h_s @ w.T).float(), dim=-1).gather(1, labels[:, None])[:, 0]
    with torch.no_grad():
        logp_t = torch.log_softmax((h_t @ w.T).float(), dim=-1).gather(1, labels[:, None])[:, 0]
    gap = (logp_t - logp_s).detach()
    sdar = (torch.sigmoid(5.0 * gap) * (logp_t - logp_s)).mean()
    return _policy_term(logp_s, adv) + LAMBDA * sdar


def step(model, opt, batch, loss_fn, impl):
    ids_s, ids_t, resp = batch["student"], batch["teacher"], batch["response_len"]
    base = _base(model)
    w = base.lm_head.weight
    out_s = base.model(input_ids=ids_s)
    h_s = out_s.last_hidden_state[:, -resp - 1:-1].reshape(-1, w.shape[1])
    with torch.no_grad():
        h_t = base.model(input_ids=ids_t).last_hidden_state[:, -resp - 1:-1].reshape(-1, w.shape[1])
    labels = ids_s[:, -resp:].reshape(-1)
    adv = batch["adv"].repeat_interleave(resp)
    loss = loss_fn(h_s, h_t, w, labels, adv, impl)
    loss.backward()
    del out_s, h_s, h_t
    fwd_bwd_peak = torch.cuda.max_memory_allocated() if ids_s.is_cuda else 0
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach(), fwd_bwd_peak


def make_batch(seqs, prompt, resp, skills, vocab, device):
    g = torch.Generator(device="cpu").manual_seed(seqs * 7 + resp)
    student = torch.randint(0, vocab, (seqs, prompt + resp), generator=g)
    prefix = torch.randint(0, vocab, (seqs, skills), generator=g)
    teacher = torch.cat([prefix, student], dim=1)
    adv = torch.randn(seqs, generator=g)
    return dict(student=student.to(device), teacher=teacher.to(device), adv=adv.to(device), response_len=resp)


def measure(model_name, path, seqs, args, device, dtype, model_cache):
    if model_cache.get("name") != model_name:
        model_cache.clear()
        torch.cuda.empty_cache() if device.type == "cuda" else None
        model_cache.update(name=model_name, model=build(model_name, args.vocab, device, dtype))
    model = model_cache["model"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6, foreach=True)
    loss_fn = loss_fused if path == "fused" else loss_materialised
    batch = make_batch(seqs, args.prompt, args.response, args.skills, args.vocab, device)
    tokens = seqs * args.response
    try:
        step(model, opt, batch, loss_fn, args.impl)  # warm-up: compiles kernels, creates optimizer states
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss, fwd_bwd_peak = step(model, opt, batch, loss_fn, args.impl)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.steps
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
        row = dict(model=model_name, loss=path, seqs=seqs, response_tokens=tokens,
                   trained_tokens=seqs * (args.prompt + args.response), step_s=dt,
                   response_tok_per_s=tokens / dt, peak_gib=peak / 2**30, fwd_bwd_peak_gib=fwd_bwd_peak / 2**30,
                   resident_gib=base_mem / 2**30,
                   loss_value=float(loss), finite=bool(torch.isfinite(loss)))
    except torch.OutOfMemoryError as exc:
        row = dict(model=model_name, loss=path, seqs=seqs, response_tokens=tokens, error=f"OOM: {str(exc)[:80]}")
    finally:
        del opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def fit_table(rows, total_gib):
    """Largest response-token count whose forward + backward peak, extrapolated linearly from the smallest and
    largest measured counts, stays under the card's memory (the optimizer step's own peak does not grow with
    tokens and is reported beside it)."""
    out = []
    for model in sorted({r["model"] for r in rows}):
        for path in ("materialised", "fused"):
            pts = sorted((r["response_tokens"], r["fwd_bwd_peak_gib"]) for r in rows
                         if r["model"] == model and r["loss"] == path and "peak_gib" in r)
            if len(pts) < 2:
                continue
            (n0, m0), (n1, m1) = pts[0], pts[-1]
            per_tok = (m1 - m0) / (n1 - n0)
            fixed = m0 - per_tok * n0
            largest = math.floor((total_gib - fixed) / per_tok) if per_tok > 0 else None
            out.append(dict(model=model, loss=path, fixed_gib=fixed, kib_per_response_token=per_tok * 2**20,
                            largest_response_tokens_extrapolated=largest))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="1.7b,8b-lora")
    p.add_argument("--seqs", default="8,32", help="sequences per step (smallest and largest give the slope)")
    p.add_argument("--seqs-lora", default="4,12", help="--seqs for the LoRA models")
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--response", type=int, default=1024)
    p.add_argument("--skills", type=int, default=256, help="teacher-only privileged prefix tokens")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--impl", default="auto")
    p.add_argument("--vocab", type=int, default=VOCAB)
    p.add_argument("--budget-s", type=float, default=200.0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    p.add_argument("--smoke", action="store_true", help="toy model on CPU, tiny shapes")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.seqs, args.prompt, args.response, args.skills = "toy", "1,2", 8, 8, 4
        args.seqs_lora = args.seqs
        args.vocab, args.steps, args.impl = 257, 1, "chunked"
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if device.type == "cuda" else 0.0
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    t_start, rows, cache = time.time(), [], {}
    for model_name in args.models.split(","):
        counts = args.seqs_lora if MODELS[model_name]["lora"] else args.seqs
        for seqs in (int(s) for s in counts.split(",")):
            for path in ("fused", "materialised"):
                if time.time() - t_start > args.budget_s:
                    rows.append(dict(model=model_name, loss=path, seqs=seqs, error="skipped: time budget"))
                    continue
                try:
                    rows.append(measure(model_name, path, seqs, args, device, dtype, cache))
                except Exception as exc:  # a failing case must not lose the others
                    rows.append(dict(model=model_name, loss=path, seqs=seqs,
                                     error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
                print(json.dumps(rows[-1]), flush=True)
    fits = fit_table(rows, total_gib) if device.type == "cuda" else []
    info = dict(device=name, torch=torch.__version__, total_gib=total_gib, prompt=args.prompt,
                response=args.response, skills=args.skills, vocab=args.vocab, dtype=str(dtype))
    if args.smoke:
        bad = [r for r in rows if "error" in r or not r.get("finite")]
        print("smoke:", "ok" if not bad else bad)
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step_gpu.json").write_text(json.dumps(dict(machine=info, rows=rows, fits=fits), indent=1))
    md = [f"## Training step on {name} (bf16 params + AdamW states, gradient checkpointing, V {args.vocab:,}; "
          f"per sequence {args.prompt} prompt + {args.response} response tokens, teacher +{args.skills} skill "
          "tokens)", "", "| model | loss | response tokens | step s | response tok/s | fwd+bwd peak GiB | step peak GiB |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['model']} | {r['loss']} | {r.get('response_tokens', '')} | {r['error']} | | | |")
        else:
            md.append(f"| {r['model']} | {r['loss']} | {r['response_tokens']} | {r['step_s']:.2f} | "
                      f"{r['response_tok_per_s']:.0f} | {r['fwd_bwd_peak_gib']:.1f} | {r['peak_gib']:.1f} |")
    if fits:
        md += ["", f"Largest response-token count per {total_gib:.0f} GiB card (extrapolated linearly from the two "
               "measured counts):", "", "| model | loss | fixed GiB | KiB / response token | largest tokens |",
               "|---|---|---|---|---|"]
        md += [f"| {f['model']} | {f['loss']} | {f['fixed_gib']:.1f} | {f['kib_per_response_token']:.0f} | "
               f"{f['largest_response_tokens_extrapolated']} |" for f in fits]
    text = "\n".join(md) + "\n"
    (args.out / "train_step_gpu.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
