"""SDAR for TRL: ``SDARGRPOTrainer``, a ``trl.GRPOTrainer`` whose log-probs come from the fused op and
whose loss gets λ·L_SDAR from a privileged-context teacher (the same weights).

    from sdar_kernels.integrations import SDARConfig
    from sdar_kernels.integrations.trl import SDARGRPOTrainer

    trainer = SDARGRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=ds,
                              sdar_config=SDARConfig(coef=0.01, gate="gap", beta=5.0, context_column="skills"))

The dataset carries the teacher context in ``context_column`` (keep ``remove_unused_columns=False``,
GRPOConfig's default). Written against TRL 1.16; what is overridden:

- ``_get_per_token_logps_and_entropies``: the model runs its backbone only (``add_sdar_head``) and the
  per-token log-probs/entropies come from ``sdar_kernels`` — TRL's logits path is never used, for the
  policy, the old-policy and the reference log-probs alike.
- ``_generate`` (records the final prompts) and ``_generate_and_score_completions`` (adds the
  tokenized teacher prompts, ``template.format(context=row[context_column]) + prompt``, to the batch).
  Generation itself is untouched, so TRL's vLLM modes (``use_vllm=True``, "server" or "colocate") work
  unchanged: the teacher never generates, it only scores the sampled completion.
- ``_compute_loss``: runs the teacher forward (no_grad, current weights, per micro-batch: DESIGN §3's
  "per mini-batch" choice) on teacher prompt + the same completion tokens, keeps its last hidden
  states, lets TRL build its loss on the student log-probs of one fused ``sdar_loss`` call, then adds
  ``coef · L_SDAR`` (token mean over the completion/tool mask, scaled for gradient accumulation like
  TRL's own terms) and logs ``sdar/*`` metrics through TRL's metric store.

Not supported (raise at construction): vision-language models, MoE router aux loss, LM heads with a
bias or logit scaling/soft-capping.
"""

from __future__ import annotations

import dataclasses

import torch
from accelerate.utils import is_peft_model
from trl import GRPOTrainer

from . import SDARConfig, add_sdar_head, response_logprobs, with_teacher_context

__all__ = ["SDARGRPOTrainer", "SDARConfig"]

_MULTIMODAL_KWARGS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                      "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, P) int64, left-padded like TRL's prompts."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.as_tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


class SDARGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` + SDAR. Extra argument: ``sdar_config`` (``SDARConfig``; default λ = 0.01, gap gate,
    β = 5, context column "skills"). Everything else is ``GRPOTrainer``'s.

    After each loss call, ``last_sdar_output`` holds the detached ``SDAROutput`` of that micro-batch
    (student/teacher log-probs, gap, gate, entropy) for inspection.
    """

    def __init__(self, *args, sdar_config: SDARConfig | None = None, **kwargs):
        if sdar_config is not None and not isinstance(sdar_config, SDARConfig):
            raise TypeError(f"sdar_config must be an SDARConfig, got {type(sdar_config).__name__}")
        self.sdar = sdar_config or SDARConfig()
        super().__init__(*args, **kwargs)
        if self._is_vlm:
            raise ValueError("SDARGRPOTrainer supports text-only causal LMs")
        if self.aux_loss_enabled:
            raise ValueError("SDARGRPOTrainer does not compute the MoE router aux loss; set router_aux_loss_coef=0")
        # Patch the same objects TRL gave its fused LM head (the base model under PEFT, and the reference).
        add_sdar_head(self.model.get_base_model() if is_peft_model(self.model) else self.model)
        if self.ref_model is not None:
            add_sdar_head(self.ref_model)
        self._sdar_prompts = None   # final prompts of the batch being generated
        self._sdar_request = None   # (teacher hidden (B, T, H), token mask (B, T)) for the next loss call
        self._sdar_output = None
        self.last_sdar_output = None

    # ------------------------------------------------------------------ teacher inputs

    def _generate(self, prompts: list):
        self._sdar_prompts = prompts  # after environment observations were appended: what the student saw
        return super()._generate(prompts)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.sdar.coef == 0:
            return output
        column = self.sdar.context_column
        if any(column not in row for row in inputs):
            raise ValueError(f"SDAR needs the teacher-context column {column!r} in every dataset row "
                             f"(SDARConfig.context_column); got columns {sorted(inputs[0])}")
        teacher_prompts = [with_teacher_context(p, row[column], self.sdar.context_template)
                           for p, row in zip(self._sdar_prompts, inputs, strict=True)]
        teacher_ids, _, _ = self._tokenize_prompts(teacher_prompts)
        ids, mask = _left_pad(list(teacher_ids), self._tokenizer.pad_token_id, output["prompt_ids"].device)
        output["sdar_teacher_ids"], output["sdar_teacher_mask"] = ids, mask  # (B, P_t): split/shuffled with the rest
        return output

    # ------------------------------------------------------------------ log-probs through the fused op

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        if any(multimodal.get(k) is not None for k in _MULTIMODAL_KWARGS):
            raise ValueError("SDARGRPOTrainer supports text-only inputs")
        request, self._sdar_request = self._sdar_request, None  # only the loss call carries a teacher
        size = input_ids.size(0) if request is not None else (batch_size or input_ids.size(0))
        entropy_grad = self._entropy_bonus_enabled and torch.is_grad_enabled()
        logps, entropies, outputs = [], [], []
        for start in range(0, input_ids.size(0), size):
            rows = slice(start, start + size)
            ids, am = input_ids[rows], attention_mask[rows]
            labels = ids[:, -logits_to_keep:].masked_fill(am[:, -logits_to_keep:] == 0, -100)  # (b, T)
            teacher_hidden, mask = (None, None) if request is None else (request[0][rows], request[1][rows])

            def head(hidden, weight):  # hidden (b, L, H): positions L-T-1 .. L-2 predict the completion
                return response_logprobs(hidden[:, -logits_to_keep - 1:-1], weight, labels,
                                         temperature=self.temperature, teacher_hidden=teacher_hidden, mask=mask,
                                         config=self.sdar, return_entropy=compute_entropy,
                                         entropy_grad=entropy_grad)

            with self.accelerator.autocast():
                logp, entropy, out = model(input_ids=ids, attention_mask=am, sdar_head=head)
            logps.append(logp)
            entropies.append(entropy)
            outputs.append(out)
        self._sdar_output = outputs[0] if request is not None else None
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    @torch.no_grad()
    def _teacher_hidden(self, model, inputs) -> torch.Tensor:
        """Last hidden states (B, T, H) of the teacher at the positions predicting the completion tokens."""
        completion_ids = inputs["completion_ids"]
        ids = torch.cat([inputs["sdar_teacher_ids"], completion_ids], dim=1)
        am = torch.cat([inputs["sdar_teacher_mask"], inputs["completion_mask"]], dim=1)
        steps = completion_ids.size(1)
        with self.accelerator.autocast():
            return model(input_ids=ids, attention_mask=am, sdar_head=lambda h, w: h[:, -steps - 1:-1])

    # ------------------------------------------------------------------ loss

    def _compute_loss(self, model, inputs):
        if self.sdar.coef == 0:
            return super()._compute_loss(model, inputs)
        mask = inputs["completion_mask"]  # (B, T), times the tool mask like TRL's own loss
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        self._sdar_request = (self._teacher_hidden(model, inputs), mask)
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._sdar_request = None
        out, self._sdar_output = self._sdar_output, None
        mode = "train" if self.model.training else "eval"
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = loss + self.sdar.coef * out.loss / normalizer
        self.last_sdar_output = dataclasses.replace(out, loss=out.loss.detach(), student_logp=out.student_logp.detach())
        self._log_sdar_metrics(out, mask, mode)
        return loss

    def _log_sdar_metrics(self, out, mask, mode):
        m = mask.float()

        def global_masked_mean(x):
            totals = self.accelerator.reduce(torch.stack([(x.detach().float() * m).sum(), m.sum()]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        metrics = self._metrics[mode]
        metrics["sdar/loss"].append(self.accelerator.gather(out.loss.detach()).mean().item())
        metrics["sdar/gate_mean"].append(global_masked_mean(out.gate))
        metrics["sdar/gap_mean"].append(global_masked_mean(out.gap))
        metrics["sdar/neg_gap_frac"].append(global_masked_mean((out.gap < 0).float()))
        metrics["sdar/teacher_logp"].append(global_masked_mean(out.teacher_logp))
        metrics["sdar/student_logp"].append(global_masked_mean(out.student_logp))
