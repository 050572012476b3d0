"""SDAR for verl: helpers a verl user calls from a subclass of ``DataParallelPPOActor``
(``verl/workers/actor/dp_actor.py``). verl itself is not imported here.

verl's ``_forward_micro_batch(micro_batch, temperature, calculate_entropy)`` runs the actor, takes the
full logits and calls ``logprobs_from_logits`` / ``entropy_from_logits`` on (B, T, V) tensors;
``update_policy`` then calls the policy loss from ``core_algos`` (``get_policy_loss_fn(loss_mode)``,
e.g. ``compute_policy_loss_vanilla``). ``VerlSDAR`` replaces the first with the fused op (no logits)
and wraps the second so that it adds λ·L_SDAR of the same micro-batch. See docs/INTEGRATIONS.md.

Batch keys: verl's padded layout (``input_ids``, ``attention_mask``, ``position_ids`` (B, L),
``responses``, ``response_mask`` (B, T)) plus, for the teacher, ``teacher_input_ids``,
``teacher_attention_mask``, ``teacher_position_ids``: the skill-prefixed prompt followed by the SAME
response tokens (built by the user's data pipeline, see ``with_teacher_context``). Text-only models,
``use_remove_padding=False`` (the rmpad/Ulysses layouts need the same slicing on packed rows).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import SDARConfig, add_sdar_head, response_logprobs

__all__ = ["VerlSDAR"]

_TEACHER_KEYS = ("teacher_input_ids", "teacher_attention_mask", "teacher_position_ids")


class VerlSDAR:
    """One per actor. ``forward_micro_batch`` replaces the body of ``_forward_micro_batch``;
    ``wrap_policy_loss(fn)`` returns a verl policy-loss function that adds ``config.coef`` · L_SDAR of the
    latest grad-enabled forward (the same micro-batch: verl computes the loss right after the forward)."""

    def __init__(self, config: SDARConfig = SDARConfig()):
        if not isinstance(config, SDARConfig):
            raise TypeError(f"config must be an SDARConfig, got {type(config).__name__}")
        self.config = config
        self._pending = None

    @staticmethod
    def patch(hf_model: torch.nn.Module) -> torch.nn.Module:
        """Call on the Hugging Face model before FSDP wrapping (``add_sdar_head``)."""
        return add_sdar_head(hf_model)

    @staticmethod
    def keep_teacher_keys(data):
        """verl's ``update_policy`` keeps only a fixed list of batch keys (``data.select``): make that
        ``select`` on this DataProto also keep the teacher keys. Returns ``data``."""
        select = data.select

        def select_with_teacher(batch_keys=None, *args, **kwargs):
            if batch_keys is not None:
                batch_keys = list(batch_keys) + [k for k in _TEACHER_KEYS if k in data.batch.keys()]
            return select(batch_keys, *args, **kwargs)

        data.select = select_with_teacher
        return data

    def forward_micro_batch(self, actor_module, micro_batch: dict, temperature: float,
                            calculate_entropy: bool = False) -> dict:
        """{"log_probs": (B, T) fp32, "entropys": (B, T) fp32 if calculate_entropy} like verl's method.

        With grad enabled, ``config.coef > 0`` and the teacher keys present, the teacher forward runs
        first (no_grad, current weights) and the student log-probs come from one ``sdar_loss`` call whose
        output waits for the wrapped policy loss.
        """
        if micro_batch["position_ids"].dim() != 2:
            raise ValueError("VerlSDAR supports text-only models (position_ids of shape (B, L))")
        responses = micro_batch["responses"]
        steps = responses.size(-1)
        labels = responses
        if "response_mask" in micro_batch:
            labels = responses.masked_fill(micro_batch["response_mask"] == 0, -100)  # (B, T)
        teacher_hidden = None
        if torch.is_grad_enabled() and self.config.coef > 0 and all(k in micro_batch for k in _TEACHER_KEYS):
            with torch.no_grad():
                teacher_hidden = actor_module(input_ids=micro_batch["teacher_input_ids"],
                                              attention_mask=micro_batch["teacher_attention_mask"],
                                              position_ids=micro_batch["teacher_position_ids"],
                                              sdar_head=lambda h, w: h[:, -steps - 1:-1])  # (B, T, H)
        entropy_grad = calculate_entropy and torch.is_grad_enabled()

        def head(hidden, weight):  # hidden (B, L, H): positions L-T-1 .. L-2 predict the responses
            return response_logprobs(hidden[:, -steps - 1:-1], weight, labels, temperature=temperature,
                                     teacher_hidden=teacher_hidden, config=self.config,
                                     return_entropy=calculate_entropy, entropy_grad=entropy_grad)

        logp, entropy, out = actor_module(input_ids=micro_batch["input_ids"],
                                          attention_mask=micro_batch["attention_mask"],
                                          position_ids=micro_batch["position_ids"], sdar_head=head)
        self._pending = None if out is None else (out, labels != -100)
        outputs = {"log_probs": logp}
        if calculate_entropy:
            outputs["entropys"] = entropy
        return outputs

    def wrap_policy_loss(self, policy_loss_fn: Callable) -> Callable:
        """A verl ``PolicyLossFn`` (same arguments) whose loss gains ``coef · L_SDAR``. Recent verl returns
        (pg_loss, metrics dict): the metrics gain ``actor/sdar_*``; older 4-tuples keep their shape."""

        def policy_loss(*args, **kwargs):
            result = policy_loss_fn(*args, **kwargs)
            pending, self._pending = self._pending, None
            if pending is None:
                return result
            out, valid = pending
            count = valid.sum().clamp(min=1)
            rest = list(result[1:])
            if rest and isinstance(rest[0], dict):
                rest[0] = {**rest[0],
                           "actor/sdar_loss": out.loss.detach().item(),
                           "actor/sdar_gate_mean": (out.gate.sum() / count).item(),
                           "actor/sdar_gap_mean": (out.gap.sum() / count).item(),
                           "actor/sdar_neg_gap_frac": (((out.gap < 0) & valid).sum() / count).item(),
                           "actor/sdar_teacher_logp": (out.teacher_logp.sum() / count).item()}
            return (result[0] + self.config.coef * out.loss, *rest)

        return policy_loss
