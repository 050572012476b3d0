"""sdar-kernels: fused student/teacher log-probs, gap, detached gate and the gated SDAR loss.

Public API (see the docstrings): ``fused_logprobs``, ``sdar_loss`` → ``SDAROutput``,
``grpo_sdar_loss``, the modules ``SDARLoss`` and ``GRPOSDARLoss``, the RL maths in
``sdar_kernels.losses`` and the valid option names below.
"""

from . import losses
from .interface import SDAROutput, fused_logprobs, grpo_sdar_loss, resolve_impl, sdar_loss
from .modules import GRPOSDARLoss, SDARLoss
from .options import AGG_MODES, DISTILL_KINDS, ESTIMATORS, GATES, IMPLS, REDUCTIONS

__all__ = ["fused_logprobs", "sdar_loss", "grpo_sdar_loss", "SDAROutput", "SDARLoss", "GRPOSDARLoss", "losses",
           "resolve_impl", "IMPLS", "GATES", "ESTIMATORS", "REDUCTIONS", "AGG_MODES", "DISTILL_KINDS"]
__version__ = "0.1.0"
