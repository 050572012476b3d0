"""scripts/term_gradients.py splits SDAR's gradient into the policy gradient, the gate-½ part and the gate's
deviation from ½; each part is checked against fp64 autograd through the plain model's full logits, one
unpadded sequence at a time, written from the formulas in the script's docstring."""
import copy

import pytest
import torch

from sdar.config import Config
from sdar.rollout import Sample
from sdar.teacher import prepass
from scripts.term_gradients import batch_gradients

pytestmark = pytest.mark.timeout(300)


def _logp(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """(R,) log-probabilities of ``response`` after ``prompt`` from the model's full logits."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1 : -1]  # (R, V)
    return torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(response)[:, None])[:, 0]


def test_parts_match_fp64_autograd(tmp_path):
    from sdar.models import ModelSize, init_model, load_model

    torch.set_num_threads(1)
    init_model(str(tmp_path / "m"), episodes=3, max_turns=3, size=ModelSize(vocab_size=512))
    model, _ = load_model(str(tmp_path / "m"), device="cpu", dtype="float32")
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(5, 500, (n,), generator=g).tolist()

    # three turns of different lengths; the teacher prompt is the student prompt behind a "privileged" prefix
    shapes = [(7, 4), (11, 6), (5, 3)]
    samples = []
    for k, (p, r) in enumerate(shapes):
        prompt = ids(p)
        samples.append(Sample(prompt_ids=prompt, response_ids=ids(r), engine_logprobs=[0.0] * r,
                              teacher_prompt_ids=ids(4) + prompt, group=0, episode=k, turn=0, valid_format=True))
    adv = torch.tensor([1.2, -0.7, 0.4])
    beta = 5.0
    cfg = Config(beta=beta, micro_batch_tokens=40)  # two micro-batches
    pre = prepass(model, samples, pad_id=0, device=torch.device("cpu"), max_tokens=cfg.micro_batch_tokens,
                  temperature=1.0, teacher=True)
    model.train()
    got = batch_gradients(model, samples, pre, adv, cfg, pad_id=0)

    ref_model = copy.deepcopy(model).double()
    params = [p for p in ref_model.parameters() if p.requires_grad]
    n_tok = sum(r for _, r in shapes)
    pg = half = dev = 0.0
    for s, a in zip(samples, adv.double()):
        ls = _logp(ref_model, s.prompt_ids, s.response_ids)  # (R,) with grad
        with torch.no_grad():
            lt = _logp(ref_model, s.teacher_prompt_ids, s.response_ids)  # (R,)
        gate = torch.sigmoid(beta * (lt - ls.detach()))  # (R,), detached
        pg = pg - (a * ls).sum() / n_tok  # ratio 1 at θ_old: d/dθ of −A·exp(l_S − l_old) is −A·∇l_S
        half = half + (0.5 * (lt - ls)).sum() / n_tok
        dev = dev + ((gate - 0.5) * (lt - ls)).sum() / n_tok
    for name, loss in (("pg", pg), ("half", half), ("dev", dev)):
        want = torch.cat([x.flatten() for x in torch.autograd.grad(loss, params, retain_graph=True)])
        assert got[name].shape == want.shape
        err = float((got[name] - want).norm() / want.norm())
        assert err < 1e-4, (name, err)
    # the three parts are different directions (a mixed-up part would make two of them equal)
    assert float(torch.nn.functional.cosine_similarity(got["half"], got["dev"], dim=0)) < 0.99
