"""sdar-kernels: fused student/teacher log-probs, gap, detached gate and the gated SDAR loss.

Public API (see the docstrings): ``fused_logprobs``, ``sdar_loss`` → ``SDAROutput``,
``fused_divergence`` / ``gated_divergence`` (full-vocabulary teacher–student divergences),
``grpo_sdar_loss``, the modules ``SDARLoss`` and ``GRPOSDARLoss``, the RL maths in
``sdar_kernels.losses`` and the valid option names below. The three functions take
``process_group=`` for an LM head sharded along the vocabulary (``sdar_kernels.distributed``).
"""

from . import losses
from .divergence import DIVERGENCE_KINDS, fused_divergence, gated_divergence
from .interface import SDAROutput, fused_logprobs, grpo_sdar_loss, resolve_impl, sdar_loss
from .modules import GRPOSDARLoss, SDARLoss
from .options import (AGG_MODES, DISTILL_KINDS, ESTIMATORS, FULL_ESTIMATORS, GATES, IMPLS, REDUCTIONS,
                      SAMPLED_ESTIMATORS)

__all__ = ["fused_logprobs", "sdar_loss", "grpo_sdar_loss", "SDAROutput", "fused_divergence", "gated_divergence",
           "SDARLoss", "GRPOSDARLoss", "losses", "resolve_impl", "IMPLS", "GATES", "ESTIMATORS",
           "SAMPLED_ESTIMATORS", "FULL_ESTIMATORS", "DIVERGENCE_KINDS", "REDUCTIONS", "AGG_MODES", "DISTILL_KINDS"]
__version__ = "0.1.0"
