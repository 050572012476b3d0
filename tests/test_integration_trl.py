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
from sdar_kernels.integrations.verl import VerlSDAR  # noqa: E402

HIDDEN = 64
PROMPTS = ["w5 w6 w7", "w8 w9", "w10 w11 w12 w13", "w14"]
SKILLS = ["w20 w21", "w22", "", "w23 w24 w25"]  # one empty context: teacher prompt == student prompt
TEMPLATE_WORDS = ["[", "]", "Privileged", "Skill", "Information"]
CHUNK_BYTES = 192 * 1024  # fp32 tile budget of the memory test: 48k elements, < tokens × V at both V


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
    rows = [{"prompt": p, "skills": s} for p, s in zip(PROMPTS, SKILLS)]
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


def _left_padded(rows, width):
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    return ids, mask


def test_verl_helper_matches_full_logits(trained):
    """VerlSDAR on verl's padded micro-batch layout: log-probs, entropies, the wrapped policy loss."""
    trainer, tokenizer, _ = trained
    model = VerlSDAR.patch(trainer.model)
    responses = torch.tensor([[30, 31, 1], [40, 1, 0]])  # row 1: last position is padding
    response_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    batch = {"responses": responses, "response_mask": response_mask}
    students = [tokenizer(p)["input_ids"] for p in PROMPTS[:2]]
    teachers = [tokenizer(with_teacher_context(p, s))["input_ids"] for p, s in zip(PROMPTS[:2], SKILLS[:2])]
    for prefix, prompts in (("", students), ("teacher_", teachers)):
        ids, mask = _left_padded(prompts, max(map(len, prompts)))
        mask = torch.cat([mask, response_mask], 1)
        batch[prefix + "input_ids"] = torch.cat([ids, responses], 1)
        batch[prefix + "attention_mask"] = mask
        batch[prefix + "position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
    hook = VerlSDAR(SDARConfig(coef=0.5))
    out = hook.forward_micro_batch(model, batch, temperature=1.0, calculate_entropy=True)
    assert out["log_probs"].requires_grad and out["entropys"].requires_grad  # entropy bonus path keeps grads
    ref_s, ref_t, ref_h = (torch.zeros(2, 3, dtype=torch.float64) for _ in range(3))
    with torch.no_grad():
        for i in range(2):
            n = int(response_mask[i].sum())
            for prompt, ref in ((students[i], ref_s), (teachers[i], ref_t)):
                ids = torch.tensor(prompt + responses[i, :n].tolist())
                ref[i, :n] = _full_logits_logp(model, ids, n)
            logits = model(input_ids=torch.tensor(students[i] + responses[i, :n].tolist())[None]).logits
            logp_all = logits[0, -n - 1:-1].double().log_softmax(-1)
            ref_h[i, :n] = -(logp_all.exp() * logp_all).sum(-1)
    torch.testing.assert_close(out["log_probs"].detach().double(), ref_s, atol=2e-5, rtol=0)
    torch.testing.assert_close(out["entropys"].detach().double(), ref_h, atol=2e-5, rtol=0)
    valid = response_mask.bool()
    gap = ref_t - ref_s
    sdar_ref = (torch.sigmoid(5.0 * gap) * gap)[valid].mean()
    loss, metrics = hook.wrap_policy_loss(lambda **kw: (torch.tensor(1.0, dtype=torch.float64), {"pg": 1.0}))()
    torch.testing.assert_close(loss, 1.0 + 0.5 * sdar_ref, atol=2e-5, rtol=0)
    assert metrics["pg"] == 1.0
    assert metrics["actor/sdar_neg_gap_frac"] == pytest.approx(float((gap[valid] < 0).double().mean()))
    with torch.no_grad():  # old-log-prob pass: no teacher, nothing left pending
        hook.forward_micro_batch(model, batch, temperature=1.0)
    assert hook.wrap_policy_loss(lambda **kw: (torch.tensor(2.0), {}))()[0] == 2.0


def test_verl_keep_teacher_keys():
    class Proto:  # the two DataProto members keep_teacher_keys relies on
        def __init__(self, batch):
            self.batch = batch

        def select(self, batch_keys=None, non_tensor_batch_keys=None):
            return Proto({k: self.batch[k] for k in batch_keys})

    keys = ("input_ids", "teacher_input_ids", "teacher_attention_mask", "teacher_position_ids", "other")
    data = VerlSDAR.keep_teacher_keys(Proto({k: torch.zeros(1) for k in keys}))
    assert sorted(data.select(batch_keys=["input_ids"]).batch) == sorted(keys[:4])


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


def _loss_allocations(tmp_path, vocab, impls):
    """Per impl: largest allocation (elements) of one SDAR loss forward + backward on the same batch,
    weight-shaped (V, H) gradients excluded; and the number of completion tokens."""
    path, tokenizer = _setup(tmp_path / f"m{vocab}", vocab)
    trainer = _trainer(path, tokenizer, tmp_path / f"o{vocab}", sdar_config=SDARConfig(coef=1.0), max_steps=1)
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._generate_and_score_completions([{"prompt": p, "skills": s} for p, s in zip(PROMPTS, SKILLS)])
    largest = []
    for impl in impls:
        trainer.sdar = SDARConfig(coef=1.0, impl=impl, chunk_bytes=CHUNK_BYTES)
        probe = _LargestOutputs()
        with probe:
            trainer._compute_loss(trainer.model, inputs).backward()
        largest.append(max(n for n, shape in probe.sizes if n != vocab * HIDDEN))
    return largest, inputs["completion_ids"].numel()


def test_loss_never_materialises_tokens_by_vocab(tmp_path):
    (small, naive), tokens = _loss_allocations(tmp_path, 8192, ("chunked", "naive"))
    (large,), _ = _loss_allocations(tmp_path, 32768, ("chunked",))
    assert large <= CHUNK_BYTES // 4 and small <= CHUNK_BYTES // 4  # bounded by the tile budget, not by V
    assert CHUNK_BYTES // 4 < tokens * 8192  # the bound above excludes a [tokens, V] tensor at both V
    assert naive >= tokens * 8192  # positive control: the naive impl's [tokens, V] logits are seen


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
