"""The RL maths in sdar_kernels.losses (hand-computed values) and grpo_sdar_loss end to end."""

from __future__ import annotations

import math

import pytest
import torch

import sdar_kernels as sk
from sdar_kernels import losses

from _kernels_common import assert_within_naive, err, make_case, truth

ALL_IMPLS = ["naive", "chunked", "triton", "forward_grad"]


# ---------------------------------------------------------------- pure functions, hand-computed

MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


@pytest.mark.parametrize("mode, expected", [
    ("token-mean", (1 + 2 + 4) / 3),
    ("seq-mean-token-mean", ((1 + 2) / 2 + 4 / 1) / 2),
    ("seq-mean-token-sum", ((1 + 2) + 4) / 2),
    ("seq-mean-token-sum-norm", ((1 + 2) + 4) / 3),
])
def test_agg_loss_hand_values(mode, expected):
    value, _ = losses.agg_loss(LOSS, MASK, mode)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_agg_loss_edge_cases():
    one_row = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # a fully masked sequence does not count as a sequence
    assert losses.agg_loss(LOSS, one_row, "seq-mean-token-mean")[0].item() == pytest.approx(1.5)
    assert losses.agg_loss(LOSS, one_row, "seq-mean-token-sum")[0].item() == pytest.approx(3.0)
    assert losses.agg_loss(LOSS, MASK, "seq-mean-token-sum-norm", norm_len=7)[0].item() == pytest.approx(1.0)
    for mode in sk.AGG_MODES:
        value = losses.agg_loss(LOSS, torch.zeros(2, 3), mode)[0]
        assert value.item() == 0.0
    with pytest.raises(ValueError, match="agg"):
        losses.agg_loss(LOSS, MASK, "seq-sum")


def _grad_of(fn, x):
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = fn(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    return y.item(), g.item()


def test_policy_loss_hand_values():
    old = torch.tensor(0.0, dtype=torch.float64)
    # A > 0, r = 1.5: the clipped branch (−1.2) is the max; no gradient.
    value, grad = _grad_of(lambda lp: losses.policy_loss(lp, old, torch.tensor(1.0), clip=0.2)[0], math.log(1.5))
    assert value == pytest.approx(-1.2) and grad == 0.0
    # A < 0, r = 1.5: the unclipped branch 1.5 is the max; d/dlogp (−A r) = −A r = 1.5.
    value, grad = _grad_of(lambda lp: losses.policy_loss(lp, old, torch.tensor(-1.0), clip=0.2)[0], math.log(1.5))
    assert value == pytest.approx(1.5) and grad == pytest.approx(1.5)
    _, info = losses.policy_loss(torch.tensor([math.log(1.5), 0.0]), torch.zeros(2), torch.tensor([1.0, 1.0]))
    assert info["clipped"].tolist() == [True, False]
    # clip_high widens only the upper side
    value, _ = _grad_of(lambda lp: losses.policy_loss(lp, old, torch.tensor(1.0), clip=0.2, clip_high=0.28)[0],
                        math.log(1.5))
    assert value == pytest.approx(-1.28)


def test_k3_and_entropy_bonus_hand_values():
    ref = torch.tensor(-2.0, dtype=torch.float64)
    value, grad = _grad_of(lambda lp: losses.k3_kl(lp, ref)[0], -1.0)
    assert value == pytest.approx(math.exp(-1) + 1 - 1) and grad == pytest.approx(1 - math.exp(-1))
    assert losses.entropy_bonus(torch.tensor(2.0), coef=0.01)[0].item() == pytest.approx(-0.02)


def test_skill_sd_hand_values():
    teacher, old = torch.tensor(-1.5, dtype=torch.float64), torch.tensor(-1.2, dtype=torch.float64)
    value, grad = _grad_of(lambda lp: losses.skill_sd_loss(lp, teacher, old)[0], -1.0)
    rho, ell = math.exp(0.2), 0.5
    assert value == pytest.approx(rho * (math.exp(-ell) - 1 + ell))
    assert grad == pytest.approx(rho * (1 - math.exp(-ell)))  # ρ is detached
    _, info = losses.skill_sd_loss(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(-20.0))
    assert info["ratio"].item() == pytest.approx(math.exp(10.0))


def test_rlsd_advantages_hand_values():
    adv = torch.tensor([2.0, -1.0, 0.5])
    teacher = torch.tensor([-1.0, -0.5, -3.0])
    old = torch.tensor([-1.1, -1.0, -1.0])
    got, _ = losses.rlsd_advantages(adv, teacher, old, coef=0.5, clip=0.2)
    w0 = 0.5 + 0.5 * math.exp(0.1)          # inside the clip range
    w1 = 0.5 + 0.5 * 0.8                    # exp(−0.5) clipped up to 0.8
    w2 = 0.5 + 0.5 * 0.8                    # exp(−2) clipped up to 0.8
    assert got.tolist() == pytest.approx([2.0 * w0, -1.0 * w1, 0.5 * w2], rel=1e-6)
    assert torch.equal(losses.rlsd_advantages(adv, teacher, old, coef=0.0)[0], adv)


def test_gates_hand_values():
    gap = torch.tensor([0.0, 0.2, -0.4])
    ent = torch.tensor([math.log(8), 0.0, math.log(2)])
    g, _ = losses.sdar_gate(gap, gate="gap", beta=5.0)
    assert g.tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(2))])
    g, _ = losses.sdar_gate(gap, ent, gate="entropy", vocab_size=8)
    assert g.tolist() == pytest.approx([1.0, 0.0, 1 / 3])
    g, _ = losses.sdar_gate(gap, ent, gate="soft_or", beta=5.0, vocab_size=8)
    sig = [0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(2))]
    assert g.tolist() == pytest.approx([1 - (1 - h) * (1 - s) for h, s in zip([1.0, 0.0, 1 / 3], sig)])
    assert losses.sdar_gate(gap, gate="none")[0].tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="entropy"):
        losses.sdar_gate(gap, gate="entropy")
    # the gate is detached
    assert not losses.sdar_gate(gap.requires_grad_(), gate="gap")[0].requires_grad


def test_sdar_token_loss_and_truncated_is():
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    tl = torch.tensor([-0.5, -2.5])
    g = torch.tensor([0.3, 0.6])
    loss, info = losses.sdar_token_loss(lp, tl, gate=g, estimator="sdar")
    loss.sum().backward()
    assert loss.tolist() == pytest.approx([0.3 * 0.5, 0.6 * -0.5]) and lp.grad.tolist() == pytest.approx([-0.3, -0.6])
    lp.grad = None
    loss, _ = losses.sdar_token_loss(lp, tl, gate=g, estimator="reverse_kl")
    loss.sum().backward()
    assert lp.grad.tolist() == pytest.approx([-0.3 * 0.5, -0.6 * -0.5])
    assert info["gap"].tolist() == pytest.approx([0.5, -0.5])
    w, info = losses.truncated_is_weights(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]), cap=2.0)
    assert w.tolist() == pytest.approx([1.0, 2.0]) and info["truncated"].tolist() == [False, True]


# ---------------------------------------------------------------- grpo_sdar_loss end to end

def _batch(dtype, seed=0, b=3, t=5, hdim=20, v=41):
    n = b * t
    case = make_case(n, hdim, v, dtype, "random", seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    teacher = (case.hidden.double() + 0.7 * torch.randn(n, hdim, generator=g, dtype=torch.float64)).to(dtype)
    mask = torch.ones(b, t)
    mask[0, 3:] = 0
    mask[2, 1] = 0
    adv = torch.randn(b, generator=g)
    ref = -torch.rand(b, t, generator=g) * 4
    old = -torch.rand(b, t, generator=g) * 4
    return dict(hs=case.hidden.reshape(b, t, hdim), ht=teacher.reshape(b, t, hdim), w=case.weight,
                y=case.labels.reshape(b, t), mask=mask, adv=adv, ref=ref, old=old)


def _grpo_run(impl, d, old=None, **kw):
    if impl == "forward_grad":  # 4-row chunks: 15 rows → 4 chunks, the last one short
        kw.setdefault("chunk_bytes", 4 * 4 * d["w"].shape[0])
    h = d["hs"].clone().requires_grad_()
    w = d["w"].clone().requires_grad_()
    loss, metrics = sk.grpo_sdar_loss(h, kw.pop("teacher", d["ht"]), w, d["y"], d["adv"], old, d["ref"], d["mask"],
                                      impl=impl, **kw)
    loss.backward()
    return loss.detach(), metrics, h.grad, w.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_grpo_token_mean_matches_hand_derivation(impl, dtype):
    """On-policy token-mean PG + k3 KL + entropy bonus + λ·SDAR: per-token coefficients by hand."""
    d = _batch(dtype)
    c_kl, c_h, lam, beta, temp = 0.05, 0.01, 0.3, 5.0, 1.0
    hs, ht, w, y = d["hs"].reshape(-1, 20), d["ht"].reshape(-1, 20), d["w"], d["y"].reshape(-1)
    valid = (y != -100) & (d["mask"].reshape(-1) != 0)
    _, ls, ent, _, _ = truth(hs, w, y, valid, temp)
    _, lt, _, _, _ = truth(ht, w, y, valid, temp)
    adv = d["adv"][:, None].expand(3, 5).reshape(-1).double()
    ref = d["ref"].reshape(-1).double()
    wv = valid.double() / valid.sum()
    g = 1 / (1 + torch.exp(-beta * (lt - ls)))
    k3 = torch.exp(ref - ls) - (ref - ls) - 1
    loss_ref = (wv * (-adv + c_kl * k3 - c_h * ent)).sum() + lam * (wv * g * (lt - ls)).sum()
    a = wv * (-adv + c_kl * (1 - torch.exp(ref - ls)) - lam * g)
    b = -c_h * wv
    _, _, _, dh_ref, dw_ref = truth(hs, w, y, valid, temp, a, b)
    kw = dict(kl_coef=c_kl, entropy_coef=c_h, sdar_coef=lam, beta=beta)
    loss, metrics, dh, dw = _grpo_run(impl, d, **kw)
    loss_n, _, dh_n, dw_n = _grpo_run("naive", d, **kw)
    assert_within_naive("loss", loss, loss_n, loss_ref, dtype)
    assert_within_naive("d_hidden", dh.reshape(-1, 20), dh_n.reshape(-1, 20), dh_ref, dtype)
    assert_within_naive("d_weight", dw, dw_n, dw_ref, dtype)
    assert metrics["clip_frac"].item() == 0.0 and metrics["ratio_mean"].item() == pytest.approx(1.0)
    recombined = (metrics["pg_loss"] + c_kl * metrics["kl"] - c_h * metrics["entropy"]
                  + lam * metrics["sdar_loss"])
    assert recombined.item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)


def _fp64_autograd_truth(d, old, **kw):
    """fp64 log_softmax + autograd of the composed objective (a second, independent-of-kernels check)."""
    hs = d["hs"].double().reshape(-1, 20).requires_grad_()
    w = d["w"].double().requires_grad_()
    y = d["y"].reshape(-1)
    valid = (y != -100) & (d["mask"].reshape(-1) != 0)
    yi = torch.where(valid, y, 0)

    def stats(h):
        log_p = torch.log_softmax(h @ w.T / kw.get("temperature", 1.0), dim=1)
        lp = torch.where(valid, log_p.gather(1, yi[:, None])[:, 0], 0.0)
        return lp, torch.where(valid, -(log_p.exp() * log_p).sum(1), 0.0)

    ls, ent = stats(hs)
    with torch.no_grad():
        lt, _ = stats(d["ht"].double().reshape(-1, 20))
    wts = (d["mask"] * (d["y"] != -100)).double()
    agg_w = losses.agg_weights(wts, kw.get("agg", "token-mean")).reshape(-1).double()
    tok_w = losses.agg_weights(wts.reshape(-1), "token-mean").double()
    adv = d["adv"][:, None].expand(3, 5).reshape(-1).double() * valid
    hyper = {k: v for k, v in kw.items() if k not in ("agg", "temperature")}
    if "sdar_estimator" in hyper:
        hyper["estimator"] = hyper.pop("sdar_estimator")
    f, _ = losses.grpo_token_objective(
        ls, ent, advantages=adv, agg_weight=agg_w, distill_weight=tok_w,
        old_logp=None if old is None else torch.where(valid, old.reshape(-1).double(), 0.0),
        ref_logp=torch.where(valid, d["ref"].reshape(-1).double(), 0.0), teacher_logp=lt, vocab_size=41, **hyper)
    loss = f.sum()
    loss.backward()
    return loss.detach(), hs.grad, w.grad


@pytest.mark.parametrize("distill, rlsd", [("sdar", 0.0), ("skill_sd", 0.0), ("sdar", 0.5), ("none", 0.0)])
@pytest.mark.parametrize("agg", sk.AGG_MODES)
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_grpo_modes_agree_with_fp64_autograd(impl, agg, distill, rlsd):
    """Off-policy (clipping active), every aggregation and distillation variant, fp32 inputs."""
    d = _batch(torch.float32, seed=1)
    old = d["old"]
    kw = dict(agg=agg, distill=distill, rlsd_coef=rlsd, kl_coef=0.02, entropy_coef=0.003, sdar_coef=0.2,
              gate="soft_or", sdar_estimator="reverse_kl" if distill == "sdar" else "sdar", temperature=0.8)
    loss_ref, dh_ref, dw_ref = _fp64_autograd_truth(d, old, **kw)
    loss, metrics, dh, dw = _grpo_run(impl, d, old=old, **kw)
    assert err(loss, loss_ref) <= 1e-5 * (1 + loss_ref.abs().item())
    assert err(dh.reshape(-1, 20), dh_ref) <= 1e-5 * (1 + dh_ref.abs().max().item())
    assert err(dw, dw_ref) <= 1e-5 * (1 + dw_ref.abs().max().item())
    assert 0.0 < metrics["clip_frac"].item() < 1.0
    for value in metrics.values():
        assert not value.requires_grad and torch.isfinite(value)


@pytest.mark.parametrize("impl", ["naive", "chunked", "forward_grad"])
def test_grpo_switches(impl):
    d = _batch(torch.float32, seed=2)
    # OPSD: no policy-gradient term.
    loss, m, _, _ = _grpo_run(impl, d, pg_coef=0.0, sdar_coef=0.5)
    assert loss.item() == pytest.approx(0.5 * m["sdar_loss"].item(), rel=1e-6)
    # teacher_hidden=None is plain GRPO, equal to sdar_coef = 0 with a teacher.
    plain, m_plain, dh_plain, _ = _grpo_run(impl, d, teacher=None)
    zero_coef, _, dh_zero, _ = _grpo_run(impl, d, sdar_coef=0.0)
    assert plain.item() == pytest.approx(zero_coef.item(), rel=1e-6) and err(dh_plain, dh_zero) < 1e-6
    assert m_plain["gate_mean"].item() == 0.0 and m_plain["sdar_loss"].item() == 0.0
    # per-sequence advantages broadcast like their per-token expansion
    per_token = dict(d, adv=d["adv"][:, None].expand(3, 5).clone())
    a, _, dh_a, _ = _grpo_run(impl, per_token)
    b, _, dh_b, _ = _grpo_run(impl, d)
    assert a.item() == b.item() and torch.equal(dh_a, dh_b)


@pytest.mark.parametrize("impl", ["naive", "chunked", "forward_grad"])
def test_grpo_rlsd_metrics_match_fp64(impl):
    """RLSD has a teacher but no distillation term: the gap and the advantage weight are still reported."""
    d = _batch(torch.float32, seed=6)
    hs, ht, y = d["hs"].reshape(-1, 20), d["ht"].reshape(-1, 20), d["y"].reshape(-1)
    valid = (y != -100) & (d["mask"].reshape(-1) != 0)
    _, ls, _, _, _ = truth(hs, d["w"], y, valid, 1.0)
    _, lt, _, _, _ = truth(ht, d["w"], y, valid, 1.0)
    old = d["old"].reshape(-1).double()
    adv = d["adv"][:, None].expand(3, 5).reshape(-1).double()
    ratio = torch.exp(torch.sign(adv) * (lt - old))
    weight = 0.7 + 0.3 * ratio.clamp(0.8, 1.2)
    _, m, _, _ = _grpo_run(impl, d, old=d["old"], distill="none", rlsd_coef=0.3)
    assert m["gap_mean"].item() == pytest.approx((lt - ls)[valid].mean().item(), abs=1e-5)
    assert m["neg_gap_frac"].item() == pytest.approx(((lt - ls)[valid] < 0).double().mean().item())
    assert m["rlsd_weight_mean"].item() == pytest.approx(weight[valid].mean().item(), abs=1e-5)
    assert m["gate_mean"].item() == 0.0 and m["sdar_loss"].item() == 0.0
    _, m_off, _, _ = _grpo_run(impl, d, old=d["old"], distill="none")
    assert m_off["rlsd_weight_mean"].item() == 1.0
    assert m_off["gap_mean"].item() == pytest.approx(m["gap_mean"].item())


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_grpo_fully_masked_is_zero(impl):
    d = _batch(torch.float32, seed=3)
    d["mask"] = torch.zeros(3, 5)
    for agg in sk.AGG_MODES:
        loss, metrics, dh, dw = _grpo_run(impl, d, old=d["old"], agg=agg, kl_coef=0.1, entropy_coef=0.1)
        assert loss.item() == 0.0 and (dh == 0).all() and (dw == 0).all()
        assert all(torch.isfinite(v) for v in metrics.values())


def test_grpo_module_and_bad_input():
    d = _batch(torch.float32, seed=4)
    module = sk.GRPOSDARLoss(sdar_coef=0.1, agg="seq-mean-token-mean", impl="chunked")
    a, _ = module(d["hs"], d["ht"], d["w"], d["y"], d["adv"], None, None, d["mask"])
    b, _ = sk.grpo_sdar_loss(d["hs"], d["ht"], d["w"], d["y"], d["adv"], mask=d["mask"], sdar_coef=0.1,
                             agg="seq-mean-token-mean", impl="chunked")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="agg"):
        sk.GRPOSDARLoss(agg="mean")
    args = (d["hs"], d["ht"], d["w"], d["y"])
    with pytest.raises(ValueError, match="advantages"):
        sk.grpo_sdar_loss(*args, torch.randn(4))
    with pytest.raises(TypeError, match="advantages"):
        sk.grpo_sdar_loss(*args, torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="old_logp"):
        sk.grpo_sdar_loss(*args, d["adv"], old_logp=torch.zeros(3))
    with pytest.raises(ValueError, match="rlsd_coef"):
        sk.grpo_sdar_loss(d["hs"], None, d["w"], d["y"], d["adv"], rlsd_coef=0.5)
    with pytest.raises(ValueError, match="ref_logp"):
        sk.grpo_sdar_loss(*args, d["adv"], kl_coef=0.1)
    with pytest.raises(ValueError, match="distill"):
        sk.grpo_sdar_loss(*args, d["adv"], distill="kd")
    with pytest.raises(ValueError, match="teacher_hidden"):
        sk.grpo_sdar_loss(d["hs"], d["ht"][:2], d["w"], d["y"], d["adv"])


def test_grpo_compiles_without_graph_break():
    d = _batch(torch.float32, seed=5)
    torch._dynamo.reset()

    def step(h, w):
        loss, metrics = sk.grpo_sdar_loss(h, d["ht"], w, d["y"], d["adv"], d["old"], d["ref"], d["mask"],
                                          kl_coef=0.01, entropy_coef=0.001, impl="chunked")
        return loss, metrics["clip_frac"]

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (compiled, step):
        h = d["hs"].clone().requires_grad_()
        w = d["w"].clone().requires_grad_()
        loss, clip_frac = fn(h, w)
        loss.backward()
        results.append((loss.detach(), clip_frac, h.grad, w.grad))
    for x, y in zip(*results):
        torch.testing.assert_close(x, y)
