"""Drop-in use of ``sdar_kernels`` from existing RL trainers (TRL in ``.trl``, verl in ``.verl``).

Three framework-free pieces both adapters share:

- ``SDARConfig``: the SDAR options (λ, gate, β, estimator, the teacher-context column and template).
- ``add_sdar_head(model)``: patches a Hugging Face causal LM so that ``model(..., sdar_head=fn)`` runs
  the backbone only and returns ``fn(last_hidden_state, lm_head_weight)`` — no logits. The head runs
  *inside* the model's forward, so DDP / FSDP / PEFT wrappers see an ordinary forward call and the
  LM-head weight is the live (unsharded) one. Without ``sdar_head`` the forward is unchanged, so
  generation (HF ``generate``) is untouched.
- ``response_logprobs``: student log-probs/entropy (and, given teacher hidden states, the SDAR loss)
  of response tokens from hidden states with the fused op — never a [tokens × V] tensor.

Only the public API of ``sdar_kernels`` is used here.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch
from torch import Tensor

import sdar_kernels as sk

__all__ = ["SDARConfig", "add_sdar_head", "response_logprobs", "with_teacher_context"]


@dataclass(frozen=True)
class SDARConfig:
    """Options of the SDAR term added to a trainer's policy loss (DESIGN §1, §3).

    coef: λ of L_SDAR (published 0.01; 0 = plain GRPO through the fused log-prob op, no teacher).
    gate: "gap" | "entropy" | "soft_or" | "none"; beta: β of σ(β·Δ); estimator: "sdar" | "reverse_kl".
    context_column: dataset column holding the privileged context (the skills text).
    context_template: how the context is prepended to the student prompt to form the teacher prompt.
    impl, chunk_bytes: passed to the fused op ("auto" = triton on CUDA, chunked elsewhere).
    """

    coef: float = 0.01
    gate: str = "gap"
    beta: float = 5.0
    estimator: str = "sdar"
    context_column: str = "skills"
    context_template: str = "[Privileged Skill Information]\n{context}\n\n"
    impl: str = "auto"
    chunk_bytes: int | None = None

    def __post_init__(self):
        if not isinstance(self.coef, (int, float)) or self.coef < 0:
            raise ValueError(f"coef must be a number >= 0, got {self.coef!r}")
        if not isinstance(self.beta, (int, float)) or self.beta < 0:
            raise ValueError(f"beta must be a number >= 0, got {self.beta!r}")
        for name, value, valid in (("gate", self.gate, sk.GATES), ("estimator", self.estimator, sk.ESTIMATORS),
                                   ("impl", self.impl, sk.IMPLS)):
            if value not in valid:
                raise ValueError(f"{name}={value!r} is not valid; expected one of {', '.join(map(repr, valid))}")
        if not isinstance(self.context_column, str) or not self.context_column:
            raise ValueError(f"context_column must be a non-empty string, got {self.context_column!r}")
        if "{context}" not in self.context_template:
            raise ValueError(f"context_template must contain '{{context}}', got {self.context_template!r}")
        if self.chunk_bytes is not None and (not isinstance(self.chunk_bytes, int) or self.chunk_bytes <= 0):
            raise ValueError(f"chunk_bytes must be a positive int or None, got {self.chunk_bytes!r}")


def with_teacher_context(prompt, context, template: str = SDARConfig.context_template):
    """The teacher prompt: ``template.format(context=context)`` prepended to the student prompt.

    ``prompt`` is a string or a chat (list of {"role", "content"} messages; the prefix goes in front of
    the first user message's text). An empty/None context returns the prompt unchanged.
    """
    if context is None or context == "":
        return prompt
    prefix = template.format(context=context)
    if isinstance(prompt, str):
        return prefix + prompt
    if not isinstance(prompt, list) or not all(isinstance(m, dict) and "role" in m for m in prompt):
        raise TypeError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
    messages = [dict(m) for m in prompt]
    i = next((k for k, m in enumerate(messages) if m["role"] == "user"), None)
    if i is None:
        raise ValueError("a chat prompt needs a user message to carry the teacher context")
    content = messages[i]["content"]
    if isinstance(content, str):
        messages[i]["content"] = prefix + content
    else:  # content blocks: prefix a text block
        messages[i]["content"] = [{"type": "text", "text": prefix}] + list(content)
    return messages


def add_sdar_head(model: torch.nn.Module) -> torch.nn.Module:
    """Patch ``model.forward`` (a HF ``PreTrainedModel`` causal LM): ``model(..., sdar_head=fn)`` returns
    ``fn(hidden, weight)`` with hidden = the backbone's last hidden state (B, L, H) and weight = the
    LM-head weight (V, H), computed with autocast disabled. Idempotent; returns the model."""
    if getattr(model, "_sdar_head_patched", False):
        return model
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise TypeError(f"model must be a causal LM with an output embedding, got {type(model).__name__}")
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("add_sdar_head: LM heads with a bias are not supported")
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                 "logits_scaling"):
        value = getattr(text_config, attr, None)
        if value is not None and value != 1.0:
            raise ValueError(f"add_sdar_head: models with {attr}={value!r} are not supported (logits are "
                             "hidden · Wᵀ / temperature in the fused op)")
    previous_forward = model.forward

    @functools.wraps(type(model).forward)  # keeps the signature `generate` validates kwargs against
    def forward(self, *args, sdar_head=None, **kwargs):
        if sdar_head is None:
            return previous_forward(*args, **kwargs)
        for name in ("labels", "shift_labels", "num_items_in_batch", "logits_to_keep"):  # LM-only kwargs
            kwargs.pop(name, None)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state  # (B, L, H)
        weight = self.get_output_embeddings().weight                 # looked up per call (FSDP/PEFT swap it)
        with torch.autocast(hidden.device.type, enabled=False):
            return sdar_head(hidden, weight)

    model.forward = types.MethodType(forward, model)
    model._sdar_head_patched = True
    return model


def response_logprobs(hidden: Tensor, weight: Tensor, labels: Tensor, *, temperature: float = 1.0,
                      teacher_hidden: Tensor | None = None, mask: Tensor | None = None,
                      config: SDARConfig = SDARConfig(), return_entropy: bool = True,
                      entropy_grad: bool = False) -> tuple[Tensor, Tensor | None, sk.SDAROutput | None]:
    """Per-token student log-probs of ``labels`` and, with a teacher, the SDAR loss, from hidden states.

    Args:
        hidden: (B, T, H) student states that predict ``labels`` (already shifted), any float dtype
            (cast to ``weight.dtype``); carries gradient.
        weight: (V, H) LM-head weight. labels: (B, T) int64, -100 = not scored.
        teacher_hidden: (B, T, H) states of the same tokens under the teacher context, or None.
        mask: (B, T) optional extra token mask for the SDAR mean (e.g. a tool mask).
        entropy_grad: the caller back-propagates into the entropy (an entropy bonus). Then student and
            teacher go through two ``fused_logprobs`` calls and the SDAR term is formed with
            ``sk.losses``; otherwise one ``sdar_loss`` call does both (its entropy is detached).
    Returns:
        (logp (B, T) fp32 with gradient, entropy (B, T) fp32 or None, ``SDAROutput`` or None).
    """
    hidden = hidden.to(weight.dtype)
    opts = dict(temperature=temperature, impl=config.impl, chunk_bytes=config.chunk_bytes)
    if teacher_hidden is None:
        logp, entropy = sk.fused_logprobs(hidden, weight, labels, return_entropy=return_entropy, **opts)
        return logp, entropy, None
    teacher_hidden = teacher_hidden.detach().to(weight.dtype)
    token_mask = None if mask is None else mask.bool()
    sdar = dict(gate=config.gate, beta=config.beta, estimator=config.estimator)
    if not entropy_grad:
        out = sk.sdar_loss(hidden, teacher_hidden, weight, labels, mask=token_mask, **sdar, **opts)
        return out.student_logp, out.student_entropy, out
    logp, entropy = sk.fused_logprobs(hidden, weight, labels, return_entropy=True, **opts)
    with torch.no_grad():
        teacher_logp, _ = sk.fused_logprobs(teacher_hidden, weight, labels, **opts)
    valid = labels != -100
    if token_mask is not None:
        valid = valid & token_mask
    gate, _ = sk.losses.sdar_gate(teacher_logp - logp.detach(), entropy, gate=config.gate, beta=config.beta,
                                  vocab_size=weight.shape[0])
    per_token, info = sk.losses.sdar_token_loss(logp, teacher_logp, gate=gate, estimator=config.estimator)
    zero = torch.zeros_like(gate)
    out = sk.SDAROutput(loss=sk.losses.masked_mean(per_token, valid), student_logp=logp,
                        teacher_logp=torch.where(valid, teacher_logp, zero), gap=torch.where(valid, info["gap"], zero),
                        gate=torch.where(valid, gate, zero), student_entropy=entropy.detach())
    return logp, entropy, out
