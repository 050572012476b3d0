"""Models: load any local HF causal LM, or build the embedded default (``sdar init-model``).

The embedded default is a small Qwen3-architecture model (head_dim 64 so vLLM-CPU can serve it) and a
byte-level BPE tokenizer trained with ``tokenizers`` on environment text (expert trajectories' prompts
and replies, with and without the privileged skill prefix), wrapped as a ``PreTrainedTokenizerFast``
with a ChatML template. Both are saved with ``save_pretrained`` (safetensors), so every other part of
the project — and vLLM — loads them like any Hugging Face model directory.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
from dataclasses import dataclass

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
TAG_TOKENS = ["<think>", "</think>", "<action>", "</action>", "<search>", "</search>", "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass
class ModelSize:
    """Sizes of the embedded model (``sdar init-model --hidden-size ...``)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 64  # vLLM-CPU needs >= 64
    intermediate_size: int = 512
    vocab_size: int = 1024  # BPE merges stop here (special and tag tokens included)
    max_position_embeddings: int = 2048


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


# ----------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], *, vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on ``texts`` (any string stays encodable), as a
    ``PreTrainedTokenizerFast`` with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + TAG_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok = _tags_not_special(tok)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                   bos_token=None, unk_token=None,
                                   additional_special_tokens=["<|endoftext|>", "<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _tags_not_special(tok):
    """Reply tags are single tokens but *not* special: ``decode(skip_special_tokens=True)`` (what the
    engines return as text) must keep them, or no reply would parse."""
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    for entry in data["added_tokens"]:
        if entry["content"] in TAG_TOKENS:
            entry["special"] = False
    return Tokenizer.from_str(json.dumps(data))


def chat_prompt_ids(tokenizer, user_text: str) -> list[int]:
    """Token ids of a one-message chat (the user turn) followed by the assistant header."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for t in ("<|im_end|>", "<|endoftext|>"):
        i = tokenizer.convert_tokens_to_ids(t)
        if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id:
            ids.add(i)
    return sorted(i for i in ids if i is not None)


# ----------------------------------------------------------------------------- embedded model
def environment_corpus(env_name: str, *, preset: str, env_seed: int, episodes: int, max_turns: int,
                       seed: int = 0, skill_strategy: str = "task_type", skill_max_chars: int = 400) -> list[str]:
    """Prompts and expert replies of ``episodes`` expert episodes (plain and skill-prefixed prompts)."""
    from sdar.sft import expert_episodes

    texts = []
    for ep in expert_episodes(env_name, preset=preset, env_seed=env_seed, n=episodes, max_turns=max_turns,
                              seed=seed, skill_strategy=skill_strategy, skill_max_chars=skill_max_chars):
        for turn in ep.turns:
            texts += [turn.prompt, turn.teacher_prompt, turn.reply]
    return texts


def init_model(out_dir: str, *, env_name: str = "household", preset: str = "small", env_seed: int = 0,
               episodes: int = 200, max_turns: int = 50, size: ModelSize | None = None, seed: int = 0,
               skill_max_chars: int = 400) -> str:
    """Build the embedded Qwen3-architecture model + tokenizer under ``out_dir``; returns ``out_dir``."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    size = size or ModelSize()
    texts = environment_corpus(env_name, preset=preset, env_seed=env_seed, episodes=episodes,
                               max_turns=max_turns, seed=seed, skill_max_chars=skill_max_chars)
    random.Random(seed).shuffle(texts)
    tokenizer = train_tokenizer(texts, vocab_size=size.vocab_size)
    stops = stop_token_ids(tokenizer)
    cfg = Qwen3Config(vocab_size=len(tokenizer), hidden_size=size.hidden_size,
                      intermediate_size=size.intermediate_size, num_hidden_layers=size.num_layers,
                      num_attention_heads=size.num_heads, num_key_value_heads=size.num_kv_heads,
                      head_dim=size.head_dim, max_position_embeddings=size.max_position_embeddings,
                      tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-6,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), torch_dtype="float32")
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=cfg.bos_token_id)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "sdar_model.json"), "w") as f:
        json.dump({"env": env_name, "preset": preset, "env_seed": env_seed, "episodes": episodes,
                   "size": size.__dict__, "params": sum(p.numel() for p in model.parameters())}, f, indent=2)
    return out_dir


# ----------------------------------------------------------------------------- loading
def load_tokenizer(model_dir: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_dir: str, *, device: str | torch.device = "auto", dtype: str = "auto",
               lora_rank: int = 0, gradient_checkpointing: bool = False, liger: bool = False,
               trust_remote_code: bool = False, train: bool = True):
    """Load a local HF causal LM (Qwen2.5 / Qwen3 / the embedded model). Returns (model, tokenizer).

    sdpa attention unless flash-attn is installed (then flash_attention_2 on CUDA); bf16 on CUDA;
    optional LoRA adapters (peft), gradient checkpointing and Liger Qwen patches (CUDA only)."""
    from transformers import AutoModelForCausalLM

    if not os.path.isdir(model_dir):
        raise ValueError(f"model_dir: {model_dir!r} is not a directory (run `sdar init-model` first)")
    dev = resolve_device(device) if isinstance(device, str) else device
    torch_dtype = resolve_dtype(dtype, dev)
    attn = "sdpa"
    if dev.type == "cuda" and importlib.util.find_spec("flash_attn") is not None and torch_dtype != torch.float32:
        attn = "flash_attention_2"
    if liger and dev.type == "cuda":
        _apply_liger(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, attn_implementation=attn,
                                                 trust_remote_code=trust_remote_code).to(dev)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"])
        model = get_peft_model(model, lcfg)
    model.train(train)
    return model, load_tokenizer(model_dir, trust_remote_code=trust_remote_code)


def _apply_liger(model_dir: str) -> None:
    """Liger's Qwen patches (RMSNorm, SwiGLU, RoPE); the loss stays ours (no fused CE patch)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        model_type = json.load(f).get("model_type", "")
    import liger_kernel.transformers as lk

    patch = {"qwen2": lk.apply_liger_kernel_to_qwen2, "qwen3": lk.apply_liger_kernel_to_qwen3}.get(model_type)
    if patch is not None:
        patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)


def base_model(model):
    """The transformer body of a causal LM (unwrapping peft): ``base_model(m)(ids).last_hidden_state``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model


def lm_head_weight(model) -> torch.Tensor:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.lm_head.weight


__all__ = ["CHAT_TEMPLATE", "ModelSize", "base_model", "chat_prompt_ids", "init_model", "lm_head_weight",
           "load_model", "load_tokenizer", "resolve_device", "resolve_dtype", "stop_token_ids",
           "train_tokenizer"]
