"""nn.Module wrappers: they store options and call the public functions."""

from __future__ import annotations

from torch import Tensor, nn

from .interface import SDAROutput, grpo_sdar_loss, sdar_loss
from .options import AGG_MODES, DISTILL_KINDS, ESTIMATORS, GATES, IMPLS, REDUCTIONS, check_choice


class SDARLoss(nn.Module):
    """``sdar_loss`` with stored options: ``SDARLoss(gate="gap", beta=5.0)(student_hidden, teacher_hidden,
    weight, labels, mask=None)`` → ``SDAROutput``. Options are checked at construction."""

    def __init__(self, *, gate: str = "gap", beta: float = 5.0, estimator: str = "sdar", temperature: float = 1.0,
                 ignore_index: int = -100, reduction: str = "mean", impl: str = "auto",
                 chunk_bytes: int | None = None, jsd_beta: float = 0.5, process_group=None,
                 vocab_start: int | None = None, vocab_size: int | None = None):
        super().__init__()
        check_choice("gate", gate, GATES)
        check_choice("estimator", estimator, ESTIMATORS)
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("impl", impl, IMPLS)
        self.options = dict(gate=gate, beta=beta, estimator=estimator, temperature=temperature,
                            ignore_index=ignore_index, reduction=reduction, impl=impl, chunk_bytes=chunk_bytes,
                            jsd_beta=jsd_beta, process_group=process_group, vocab_start=vocab_start,
                            vocab_size=vocab_size)

    def forward(self, student_hidden: Tensor, teacher_hidden: Tensor, weight: Tensor, labels: Tensor,
                mask: Tensor | None = None) -> SDAROutput:
        return sdar_loss(student_hidden, teacher_hidden, weight, labels, mask=mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items() if k != "process_group")


class GRPOSDARLoss(nn.Module):
    """``grpo_sdar_loss`` with stored keyword options (any of its keyword-only arguments):
    ``GRPOSDARLoss(sdar_coef=0.01)(student_hidden, teacher_hidden, weight, labels, advantages,
    old_logp=None, ref_logp=None, mask=None)`` → ``(loss, metrics)``."""

    def __init__(self, **options):
        super().__init__()
        for arg, valid in (("agg", AGG_MODES), ("gate", GATES), ("sdar_estimator", ESTIMATORS),
                           ("distill", DISTILL_KINDS), ("impl", IMPLS)):
            if arg in options:
                check_choice(arg, options[arg], valid)
        self.options = options

    def forward(self, student_hidden: Tensor, teacher_hidden: Tensor | None, weight: Tensor, labels: Tensor,
                advantages: Tensor, old_logp: Tensor | None = None, ref_logp: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return grpo_sdar_loss(student_hidden, teacher_hidden, weight, labels, advantages, old_logp, ref_logp, mask,
                              **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items() if k != "process_group")
