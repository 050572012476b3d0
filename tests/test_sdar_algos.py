"""Hand-computed tiny cases for GRPO advantages and every method's per-token loss (sdar.algos), and a
check that the hidden-state path the trainer uses (sdar_kernels.grpo_sdar_loss with the method's
options) equals the log-prob level objective on an fp64 reference."""
import math

import pytest
import torch

from sdar.algos import METHODS, group_advantages, loss_options, method_spec, rlsd_lambda, token_objective


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- advantages
def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 7.0])
    groups = torch.tensor([5, 5, 5, 5, 2, 2, 9, 1])  # ids need not be sorted or contiguous
    adv, m = group_advantages(rewards, groups, eps=1e-6)
    # group 5: mean 0.5, unbiased std sqrt(4·0.25/3) = sqrt(1/3)
    s = math.sqrt(1.0 / 3.0)
    expected = [0.5 / (s + 1e-6), -0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 0.5 / (s + 1e-6),
                0.0, 0.0,  # group 2: zero variance -> 0
                0.0, 0.0]  # groups 9 and 1: singletons -> 0
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert m["zero_var_group_frac"] == pytest.approx(3 / 4)


def test_dr_grpo_advantages_do_not_divide_by_std():
    rewards = torch.tensor([10.0, 0.0, 0.0, 0.0, 2.0])
    adv, _ = group_advantages(rewards, torch.tensor([0, 0, 0, 0, 1]), norm_by_std=False)
    assert adv.tolist() == pytest.approx([7.5, -2.5, -2.5, -2.5, 0.0])


def test_group_advantages_bad_shapes():
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------- method switches
def test_method_switches():
    assert loss_options("grpo", lam=0.01) == {"pg_coef": 1.0, "sdar_coef": 0.0, "gate": "gap", "distill": "none",
                                              "rlsd_coef": 0.0}
    assert loss_options("sdar", lam=0.01, gate="soft_or")["gate"] == "soft_or"
    assert loss_options("grpo_opsd", lam=0.01, gate="gap")["gate"] == "none"
    assert loss_options("opsd", lam=1.0)["pg_coef"] == 0.0
    assert loss_options("skill_sd", lam=0.001)["distill"] == "skill_sd"
    assert loss_options("rlsd", lam=0.5, step=50, rlsd_decay_steps=100)["rlsd_coef"] == pytest.approx(0.25)
    assert method_spec("skill_grpo").student_skills and not method_spec("skill_grpo").teacher
    assert [m for m in METHODS if method_spec(m).teacher] == ["sdar", "grpo_opsd", "opsd", "skill_sd", "rlsd"]
    with pytest.raises(ValueError, match="method"):
        method_spec("ppo")


def test_rlsd_schedule():
    assert rlsd_lambda(0, lam0=0.5, decay_steps=100) == 0.5
    assert rlsd_lambda(25, lam0=0.5, decay_steps=100) == pytest.approx(0.375)
    assert rlsd_lambda(100, lam0=0.5, decay_steps=100) == 0.0
    assert rlsd_lambda(250, lam0=0.5, decay_steps=100) == 0.0


# ----------------------------------------------------------------------------- per-token losses
LOGP = [math.log(0.5), math.log(0.25)]
TEACHER = [math.log(0.8), math.log(0.125)]
A = 2.0


def _objective(method, *, lam, step=0, old=None):
    logp = torch.tensor([LOGP], dtype=torch.float64, requires_grad=True)  # (1, 2)
    f, _ = token_objective(method, logp=logp, entropy=torch.zeros(1, 2, dtype=torch.float64),
                           advantages=torch.tensor([A], dtype=torch.float64), mask=torch.ones(1, 2),
                           old_logp=None if old is None else torch.tensor([old], dtype=torch.float64),
                           teacher_logp=torch.tensor([TEACHER], dtype=torch.float64), lam=lam, beta=5.0, step=step)
    f.sum().backward()
    return f.detach()[0].tolist(), logp.grad[0].tolist()


def test_grpo_and_skill_grpo_token_loss():
    for method in ("grpo", "skill_grpo"):
        f, g = _objective(method, lam=0.0)
        # on-policy ratio 1: f = w·(−A·1) with token-mean weight w = 1/2; df/dlogp = −A·w
        assert f == pytest.approx([-1.0, -1.0])
        assert g == pytest.approx([-1.0, -1.0])


@pytest.mark.parametrize("method,gate_fn,pg", [
    ("sdar", lambda d: _sig(5.0 * d), 1.0),
    ("grpo_opsd", lambda d: 0.5, 1.0),
    ("opsd", lambda d: _sig(5.0 * d), 0.0),
])
def test_sdar_family_token_loss(method, gate_fn, pg):
    lam = 0.01
    f, g = _objective(method, lam=lam)
    for t in range(2):
        gap = TEACHER[t] - LOGP[t]  # Δ = lT − lS
        gate = gate_fn(gap)
        # f_t = w·pg·(−A) + w·λ·g·(lT − lS);  df/dlS = −w·pg·A − w·λ·g   (w = 1/2)
        assert f[t] == pytest.approx(0.5 * pg * -A + 0.5 * lam * gate * gap, rel=1e-6)  # the gate is computed in fp32
        assert g[t] == pytest.approx(-0.5 * pg * A - 0.5 * lam * gate, rel=1e-6)


def test_skill_sd_token_loss():
    lam = 0.001
    old = [LOGP[0] - 0.2, LOGP[1] + 0.1]  # ρ = e^{0.2}, e^{−0.1}
    f, _ = _objective("skill_sd", lam=lam, old=old)
    for t in range(2):
        ratio = math.exp(LOGP[t] - old[t])
        pg = max(-A * ratio, -A * min(max(ratio, 0.8), 1.2))
        ell = LOGP[t] - TEACHER[t]
        k3 = math.exp(-ell) - 1 + ell
        assert f[t] == pytest.approx(0.5 * pg + 0.5 * lam * ratio * k3, rel=1e-6)


def test_rlsd_token_loss_and_decay():
    f, _ = _objective("rlsd", lam=0.5, step=0)
    # token 1: exp(ln 1.6) clipped to 1.2 -> Â = 2·(0.5 + 0.6) = 2.2; token 2: exp(ln 0.5) -> 0.8 -> Â = 1.8
    assert f == pytest.approx([-0.5 * 2.2, -0.5 * 1.8])
    f, _ = _objective("rlsd", lam=0.5, step=100)  # λ annealed to 0: plain GRPO
    assert f == pytest.approx([-1.0, -1.0])


def test_clipping_kl_entropy_and_aggregation():
    from sdar_kernels import losses

    logp = torch.tensor([[math.log(0.6), math.log(0.2), 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[math.log(0.4), math.log(0.4), 0.0]], dtype=torch.float64)  # ratios 1.5, 0.5
    ref = torch.tensor([[math.log(0.48), math.log(0.2), 0.0]], dtype=torch.float64)
    ent = torch.tensor([[1.0, 2.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    f, _ = token_objective("grpo", logp=logp, entropy=ent, advantages=torch.tensor([1.0], dtype=torch.float64),
                           mask=mask, old_logp=old, ref_logp=ref, kl_coef=0.1, entropy_coef=0.01)
    # PG: A=1, r=1.5 -> clipped to 1.2 -> −1.2; r=0.5 -> max(−0.5, −0.8) = −0.5
    # k3: r1 = ln(0.48/0.6) = ln 0.8 -> 0.8 − ln 0.8 − 1; r2 = 0 -> 0.  entropy bonus −0.01·H
    k3 = 0.8 - math.log(0.8) - 1
    assert f[0].tolist() == pytest.approx([0.5 * (-1.2 + 0.1 * k3 - 0.01), 0.5 * (-0.5 - 0.02), 0.0])
    f.sum().backward()
    assert logp.grad[0, 2] == 0.0  # masked token: no gradient
    # aggregation modes on a (2, 3) loss with ragged masks
    L = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(losses.agg_loss(L, m, "token-mean")[0]) == pytest.approx((1 + 2 + 4) / 3)
    assert float(losses.agg_loss(L, m, "seq-mean-token-mean")[0]) == pytest.approx((1.5 + 4) / 2)
    assert float(losses.agg_loss(L, m, "seq-mean-token-sum")[0]) == pytest.approx((3 + 4) / 2)
    assert float(losses.agg_loss(L, m, "seq-mean-token-sum-norm")[0]) == pytest.approx((3 + 4) / 3)


# ----------------------------------------------------------------------------- the trainer's path
@pytest.mark.parametrize("method", METHODS)
def test_kernel_loss_with_method_options_matches_logprob_objective(method):
    """grpo_sdar_loss(hidden, W, **loss_options(method)) == Σ token_objective(log-probs from fp64 logits),
    loss and gradient w.r.t. the student hidden states."""
    import sdar_kernels as sk

    torch.manual_seed(0)
    b, t, h, v = 3, 4, 8, 11
    hs = torch.randn(b, t, h, dtype=torch.float64)
    ht = hs + 0.3 * torch.randn(b, t, h, dtype=torch.float64)
    w = torch.randn(v, h, dtype=torch.float64)
    labels = torch.randint(0, v, (b, t))
    labels[0, 3] = -100
    adv = torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)
    old = torch.log_softmax(hs @ w.T, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0] + 0.05
    kw = dict(gate="gap", beta=5.0, clip=0.2, agg="seq-mean-token-mean", kl_coef=0.0, entropy_coef=0.01)
    lam = {"sdar": 0.3, "grpo_opsd": 0.3, "opsd": 1.0, "skill_sd": 0.2, "rlsd": 0.5}.get(method, 0.0)
    opts = loss_options(method, lam=lam, gate="gap", step=10)
    x = hs.clone().float().requires_grad_(True)
    loss, _ = sk.grpo_sdar_loss(x, ht.float() if method_spec(method).teacher else None, w.float(), labels,
                                adv.float(), old.float(), None, None, impl="naive", clip=kw["clip"], agg=kw["agg"],
                                entropy_coef=kw["entropy_coef"], beta=5.0, **opts)
    loss.backward()
    # fp64 reference on log-probs
    y = hs.clone().requires_grad_(True)
    logits = y @ w.T  # (b, t, v) — fine at this size
    lsm = torch.log_softmax(logits, -1)
    logp = lsm.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    ent = -(lsm.exp() * lsm).sum(-1)
    tlogp = torch.log_softmax(ht @ w.T, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    mask = (labels != -100).double()
    f, _ = token_objective(method, logp=logp, entropy=ent, advantages=adv, mask=mask, old_logp=old,
                           teacher_logp=tlogp, lam=lam, step=10, vocab_size=v, **kw)
    ref = (f * mask).sum()
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-4, abs=1e-5)
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-3, atol=1e-5)
