"""SDARGRPOTrainer (sdar_kernels.integrations.trl) on CPU: a tiny local Qwen3 model, a word-level
tokenizer built with ``tokenizers``, a 4-row dataset, no vLLM.

Checks: training runs and logs finite loss and SDAR metrics; the trainer's student/teacher log-probs
and SDAR loss equal an independent fp64 full-logits computation (teacher prompt rebuilt from the raw
text); the loss path never allocates a [tokens × V] tensor (a dispatch-mode probe, two vocabularies,
and the naive impl as the positive control).
"""

import dataclasses
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from sdar_kernels.integrations import SDARConfig, with_teacher_context  # noqa: E402
from sdar_kernels.integrations.trl import SDARGRPOTrainer  # noqa: E402

HIDDEN = 64
PROMPTS = ["w5 w6 w7", "w8 w9", "w10 w11 w12 w13", "w14"]
SKILLS = ["w20 w21", "w22", "", "w23 w24 w25"]  # one empty context: teacher prompt == student prompt
TEMPLATE_WORDS = ["[", "]", "Privileged", "Skill", "Information"]


def _tokenizer(vocab_size: int):
    words = ["<pad>", "<eos>", "<unk>"] + TEMPLATE_WORDS
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                                unk_token="<unk>")


def _setup(path, vocab_size: int):
    """A saved tiny Qwen3 (2 layers, hidden 64, head_dim 64) + its tokenizer; returns (model dir, tokenizer)."""
    tokenizer = _tokenizer(vocab_size)
    config = transformers.Qwen3Config(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      head_dim=64, max_position_embeddings=128, tie_word_embeddings=False,
                                      pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config)
    with torch.no_grad():  # a larger head scale gives peaked, uneven log-probs (a stronger comparison)
        model.lm_head.weight.normal_(0.0, 0.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path), tokenizer


def _reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def _trainer(path, tokenizer, out_dir, *, sdar_config, max_steps=2, beta=0.0):
    from trl import GRPOConfig

    args = GRPOConfig(output_dir=str(out_dir), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=4, max_steps=max_steps, learning_rate=1e-3, logging_steps=1,
                      report_to="none", use_cpu=True, bf16=False, save_strategy="no", beta=beta,
                      disable_tqdm=True, seed=0, dataloader_num_workers=0)
    data = datasets.Dataset.from_dict({"prompt": PROMPTS, "skills": SKILLS})
    return SDARGRPOTrainer(model=path, reward_funcs=_reward, args=args, train_dataset=data,
                           processing_class=tokenizer, sdar_config=sdar_config)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl")
    path, tokenizer = _setup(root / "model", 96)
    trainer = _trainer(path, tokenizer, root / "out", sdar_config=SDARConfig(coef=0.5), beta=0.04)
    before = trainer.model.lm_head.weight.detach().clone()
    trainer.train()
    return trainer, tokenizer, before


def test_training_runs_and_logs_sdar_metrics(trained):
    trainer, _, before = trained
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert math.isfinite(h["loss"])
        for key in ("sdar/loss", "sdar/gate_mean", "sdar/gap_mean", "sdar/neg_gap_frac", "sdar/teacher_logp",
                    "sdar/student_logp"):
            assert key in h and math.isfinite(h[key]), key
        assert 0.0 < h["sdar/gate_mean"] < 1.0 and 0.0 <= h["sdar/neg_gap_frac"] <= 1.0
        assert h["sdar/teacher_logp"] < 0 and h["sdar/student_logp"] < 0
    assert not torch.equal(before, trainer.model.lm_head.weight.detach())  # the steps really updated the head


def _full_logits_logp(model, ids, steps):
    """fp64 log-softmax of the model's own full logits: log p(ids[-steps:]) given the prefix."""
    logits = model(input_ids=ids[None]).logits[0, -steps - 1:-1].double()
    return logits.log_softmax(-1).gather(-1, ids[-steps:, None])[:, 0]


def test_logprobs_and_sdar_loss_match_full_logits(trained):
    trainer, tokenizer, _ = trained
    model = trainer.model
    rows = [{"prompt": p, "skills": s} for p, s in zip(PROMPTS, SKILLS) for _ in range(1)]
    inputs = trainer._generate_and_score_completions(rows)
    loss = trainer._compute_loss(model, inputs)
    out = trainer.last_sdar_output
    steps = inputs["completion_ids"].size(1)
    mask = inputs["completion_mask"].bool()
    ref_s = torch.zeros(mask.shape, dtype=torch.float64)
    ref_t = torch.zeros(mask.shape, dtype=torch.float64)
    with torch.no_grad():
        for i, (prompt, skills) in enumerate(zip(PROMPTS, SKILLS)):
            n = int(mask[i].sum())
            completion = inputs["completion_ids"][i, :n]
            student = torch.tensor(tokenizer(prompt)["input_ids"])
            teacher_text = (f"[Privileged Skill Information]\n{skills}\n\n" if skills else "") + prompt
            teacher = torch.tensor(tokenizer(teacher_text)["input_ids"])
            assert teacher_text == with_teacher_context(prompt, skills)
            if n:
                ref_s[i, :n] = _full_logits_logp(model, torch.cat([student, completion]), n)
                ref_t[i, :n] = _full_logits_logp(model, torch.cat([teacher, completion]), n)
    assert mask.sum() > 0 and steps == mask.shape[1]
    torch.testing.assert_close(out.student_logp.double(), ref_s, atol=2e-5, rtol=0)
    torch.testing.assert_close(out.teacher_logp.double(), ref_t, atol=2e-5, rtol=0)
    assert (ref_s - ref_t)[mask].abs().max() > 1e-3  # the teacher context really changed the log-probs
    # L_SDAR by hand (gap gate, β = 5) and its share of the trainer's loss.
    gap = ref_t - ref_s
    sdar_ref = (torch.sigmoid(5.0 * gap) * gap)[mask].mean()
    torch.testing.assert_close(out.loss.double(), sdar_ref, atol=2e-5, rtol=0)
    trainer.sdar = dataclasses.replace(trainer.sdar, coef=0.0)
    try:
        loss_grpo = trainer._compute_loss(model, inputs)
    finally:
        trainer.sdar = dataclasses.replace(trainer.sdar, coef=0.5)
    share = 0.5 * sdar_ref / trainer.current_gradient_accumulation_steps
    torch.testing.assert_close((loss - loss_grpo).double(), share, atol=2e-5, rtol=0)


class _LargestOutputs(TorchDispatchMode):
    """Records the element count of every newly allocated op output (views and in-place results skipped)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(result)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append((t.numel(), tuple(t.shape)))
        return result


def _loss_allocations(tmp_path, vocab, impl):
    """Largest allocation (elements) of one SDAR loss forward + backward, weight-shaped gradients excluded."""
    path, tokenizer = _setup(tmp_path / f"m{vocab}", vocab)
    # 192 KiB of fp32 tile temporaries: vocabulary tiles of 4096 columns, so both V below are tiled.
    trainer = _trainer(path, tokenizer, tmp_path / f"o{vocab}",
                       sdar_config=SDARConfig(coef=1.0, impl=impl, chunk_bytes=3 * 4 * 4096 * 4), max_steps=1)
    trainer.current_gradient_accumulation_steps = 1
    rows = [{"prompt": p, "skills": s} for p, s in zip(PROMPTS, SKILLS)]
    inputs = trainer._generate_and_score_completions(rows)
    probe = _LargestOutputs()
    with probe:
        trainer._compute_loss(trainer.model, inputs).backward()
    tokens = inputs["completion_ids"].numel()
    largest = max(n for n, shape in probe.sizes if n != vocab * HIDDEN)  # dW / embedding grads are (V, H)
    return largest, tokens


def test_loss_never_materialises_tokens_by_vocab(tmp_path):
    small, tokens = _loss_allocations(tmp_path, 8192, "chunked")
    large, tokens_large = _loss_allocations(tmp_path, 32768, "chunked")
    assert large <= 4096 * 8 and small <= 4096 * 8  # bounded by the tile budget, not by V
    assert large < tokens_large * 32768 // 4 and small < tokens * 8192 // 4
    # Positive control: the naive impl materialises [tokens, V] logits and the probe sees it.
    naive, tokens_naive = _loss_allocations(tmp_path, 8192, "naive")
    assert naive >= tokens_naive * 8192 // 2


def test_config_validation():
    with pytest.raises(ValueError, match="gate"):
        SDARConfig(gate="bogus")
    with pytest.raises(ValueError, match="coef"):
        SDARConfig(coef=-1.0)
    with pytest.raises(ValueError, match="context_template"):
        SDARConfig(context_template="no placeholder")
    chat = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    assert with_teacher_context(chat, "S")[1]["content"] == "[Privileged Skill Information]\nS\n\nhi"
    assert chat[1]["content"] == "hi"  # the input is not mutated
