"""The privileged-context teacher: the same weights, prompted with retrieved skills.

Teacher input of a turn = ``"[Privileged Skill Information]\\n{skills}\\n\\n"`` + the student's prompt
(built in :mod:`sdar.rollout` with ``envs.prompts.with_skills``), followed by the *same* response
tokens. Skills come from ``envs.retrieve_skills`` with the configured strategy (``task_type``,
``keyword``, ``all``, ``random`` — a control — or ``similarity``), once per episode, and are never
shown at evaluation.

When it runs: once per step, with the rollout weights θ_old, before the PPO updates (the official
code's choice). Its hidden states at the response positions are computed under ``no_grad`` and kept
(B·R·H floats — small next to the activations) until the loss; they never enter the autograd
graph. The same pre-pass recomputes the student's old log-probs (exact PPO ratio) and the frozen
reference's log-probs (k3 KL anchor).
"""
from __future__ import annotations

import torch

import sdar_kernels as sk
from sdar.batch import micro_batches, pack, response_hidden
from sdar.models import lm_head_weight


@torch.no_grad()
def prepass(model, samples, *, pad_id: int, device: torch.device, max_tokens: int, temperature: float,
            teacher: bool, ref_model=None, impl: str = "auto") -> dict:
    """Per-sample tensors computed with θ_old: ``old_logp`` [(R_i,)], ``teacher_hidden`` [(R_i, H)]
    (if ``teacher``) and ``ref_logp`` [(R_i,)] (if ``ref_model``); lists indexed like ``samples``."""
    was_training = model.training
    model.eval()
    n = len(samples)
    out = {"old_logp": [None] * n, "teacher_hidden": [None] * n if teacher else None,
           "ref_logp": [None] * n if ref_model is not None else None}
    w = lm_head_weight(model)
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    for mb in micro_batches(lengths, max_tokens=max_tokens):
        resp = [samples[i].response_ids for i in mb]
        packed = pack([samples[i].prompt_ids for i in mb], resp, pad_id=pad_id, device=device)
        h = response_hidden(model, packed)  # (b, R, H)
        old, _ = sk.fused_logprobs(h, w, packed.labels, temperature=temperature, impl=impl)  # (b, R)
        if ref_model is not None:
            h_ref = response_hidden(ref_model, packed)  # (b, R, H)
            ref, _ = sk.fused_logprobs(h_ref, lm_head_weight(ref_model), packed.labels, temperature=temperature,
                                       impl=impl)
        if teacher:
            tpacked = pack([samples[i].teacher_prompt_ids for i in mb], resp, pad_id=pad_id, device=device)
            h_t = response_hidden(model, tpacked)  # (b, R, H), same response tokens, skill-prefixed prompt
        for j, i in enumerate(mb):
            r = len(samples[i].response_ids)
            out["old_logp"][i] = old[j, :r].float()
            if ref_model is not None:
                out["ref_logp"][i] = ref[j, :r].float()
            if teacher:
                out["teacher_hidden"][i] = h_t[j, :r]
    model.train(was_training)
    return out


__all__ = ["prepass"]
