"""sdar: the lean GRPO + SDAR training stack (rollouts, privileged-context teacher, every published
method behind one switch, SFT warm-start, evaluation, CLI). Run ``sdar --help`` or ``python -m sdar``.

Modules: config (the run's dataclass), train (the loop), rollout, engines (hf / vllm), teacher, algos
(advantages and method switches), models (load / build the embedded model), sft, evaluate,
checkpoint, plot, cli.
"""
from sdar.config import Config

__all__ = ["Config"]
