"""PPO math (advantages, losses, KL, rewards), each checked three ways: a hand-computed case, a slow
reference loop and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.config import PPOConfig
from pipeline.ppo.advantages import gae, masked_mean, masked_var, masked_whiten
from pipeline.ppo.kl import AdaptiveKLController, FixedKLController, kl_estimate, make_kl_controller
from pipeline.ppo.losses import entropy_from_logits, explained_variance, policy_loss, value_loss
from pipeline.ppo.rewards import RunningMoments, empathy_scores, kl_shaped_rewards, normalize_scores

D = torch.float64


def t(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


MASK = t([[1, 1, 1, 0], [1, 1, 0, 0]])


def masked_cells() -> list[tuple[int, int]]:
    """``(b, i)`` of every valid token of ``MASK``, row by row (the loop references' order)."""
    return [(b, i) for b in range(MASK.shape[0]) for i in range(MASK.shape[1]) if MASK[b, i]]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# ---- masked statistics ----


def test_masked_stats_hand_computed() -> None:
    x = t([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 9.0]])
    assert float(masked_mean(x, MASK)) == pytest.approx(3.0)
    assert masked_mean(x, MASK, dim=1).tolist() == pytest.approx([2.0, 4.5])
    # values 1..5: population var 2, unbiased 2.5
    assert float(masked_var(x, MASK, unbiased=False)) == pytest.approx(2.0)
    assert float(masked_var(x, MASK)) == pytest.approx(2.5)


def test_masked_stats_vs_numpy_and_mask_invariance() -> None:
    x = rand(3, 5)
    mask = (rand(3, 5, seed=1) > -0.3).to(D)
    sel = x[mask.bool()].numpy()
    assert float(masked_mean(x, mask)) == pytest.approx(sel.mean())
    assert float(masked_var(x, mask)) == pytest.approx(sel.var(ddof=1))
    x2 = torch.where(mask.bool(), x, t(1e6))
    assert torch.allclose(masked_whiten(x, mask), masked_whiten(x2, mask))


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_invariants(shift_mean: bool) -> None:
    x = rand(4, 6) * 3 + 2
    mask = (rand(4, 6, seed=2) > -0.5).to(D)
    w = masked_whiten(x, mask, shift_mean=shift_mean)
    assert torch.all(w[~mask.bool()] == 0)
    expected_mean = 0.0 if shift_mean else float(masked_mean(x, mask))
    assert float(masked_mean(w, mask)) == pytest.approx(expected_mean, abs=1e-9)
    assert float(masked_var(w, mask)) == pytest.approx(1.0, rel=1e-6)


def test_masked_var_needs_two_values() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(t([[1.0, 2.0]]), t([[1, 0]]))


# ---- GAE ----


def gae_loop(
    rewards: list[list[float]], values: list[list[float]], lengths: list[int], gamma: float, lam: float
):
    adv_all, ret_all = [], []
    for r, v, n in zip(rewards, values, lengths, strict=True):
        adv = [0.0] * len(r)
        last = 0.0
        for i in range(n - 1, -1, -1):
            nxt = v[i + 1] if i + 1 < n else 0.0
            last = r[i] + gamma * nxt - v[i] + gamma * lam * last
            adv[i] = last
        adv_all.append(adv)
        ret_all.append([a + v[i] if i < n else 0.0 for i, a in enumerate(adv)])
    return adv_all, ret_all


def test_gae_hand_computed() -> None:
    rewards = t([[0.0, 0.0, 1.0]])
    values = t([[0.5, 0.5, 0.5]])
    adv, ret = gae(rewards, values, torch.ones_like(rewards), gamma=1.0, lam=0.5)
    # δ = [0, 0, 0.5]; A_2 = 0.5, A_1 = 0.25, A_0 = 0.125
    assert torch.allclose(adv, t([[0.125, 0.25, 0.5]]))
    assert torch.allclose(ret, t([[0.625, 0.75, 1.0]]))


def test_gae_vs_loop_and_mask_invariance() -> None:
    rewards, values = rand(3, 6), rand(3, 6, seed=1)
    lengths = [6, 3, 1]
    mask = t([[1.0] * n + [0.0] * (6 - n) for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    ref_adv, ref_ret = gae_loop(rewards.tolist(), values.tolist(), lengths, 0.9, 0.8)
    assert adv.tolist() == [pytest.approx(row) for row in ref_adv]
    assert ret.tolist() == [pytest.approx(row) for row in ref_ret]
    junk = torch.where(mask.bool(), 0.0, t(123.0))
    adv2, ret2 = gae(rewards + junk, values - junk, mask, gamma=0.9, lam=0.8)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)


def test_gae_gamma_lam_one_is_reward_to_go_minus_values() -> None:
    rewards, values = rand(2, 4), rand(2, 4, seed=1)
    adv, ret = gae(rewards * MASK, values, MASK, gamma=1.0, lam=1.0)
    to_go = (rewards * MASK).flip(-1).cumsum(-1).flip(-1) * MASK
    assert torch.allclose(adv, to_go - values * MASK)
    assert torch.allclose(ret, to_go)


# ---- losses ----


def test_policy_loss_hand_computed() -> None:
    old = t([[0.0, 0.0]])
    new = t([[math.log(1.5), math.log(0.5)]])
    adv = t([[1.0, 1.0]])
    loss, stats = policy_loss(new, old, adv, torch.ones_like(adv), clip_ratio=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5
    assert float(loss) == pytest.approx((-1.2 - 0.5) / 2)
    assert float(stats["clipfrac"]) == pytest.approx(0.5)
    assert float(stats["approx_kl"]) == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)


def test_policy_loss_vs_loop() -> None:
    lp, old, adv = rand(2, 4), rand(2, 4, seed=1), rand(2, 4, seed=2)
    loss, stats = policy_loss(lp, old, adv, MASK, clip_ratio=0.2)
    terms, clipped = [], []
    for b, i in masked_cells():
        r = math.exp(float(lp[b, i] - old[b, i]))
        a = float(adv[b, i])
        u, c = -a * r, -a * min(max(r, 0.8), 1.2)
        terms.append(max(u, c))
        clipped.append(c > u)
    assert float(loss) == pytest.approx(np.mean(terms))
    assert float(stats["clipfrac"]) == pytest.approx(np.mean(clipped))


def test_policy_loss_ratio_one_and_mask_invariance() -> None:
    lp, adv = rand(2, 4), rand(2, 4, seed=2)
    loss, stats = policy_loss(lp, lp.clone(), adv, MASK, clip_ratio=0.2)
    assert float(loss) == pytest.approx(-float(masked_mean(adv, MASK)))
    assert float(stats["clipfrac"]) == 0.0 and float(stats["approx_kl"]) == 0.0
    junk = torch.where(MASK.bool(), 0.0, t(50.0))
    loss2, _ = policy_loss(lp + junk, lp, adv - junk, MASK, clip_ratio=0.2)
    assert float(loss2) == pytest.approx(float(loss))


def test_policy_loss_gradient_flows() -> None:
    lp = rand(2, 4).requires_grad_()
    loss, _ = policy_loss(lp, lp.detach(), rand(2, 4, seed=2), MASK, clip_ratio=0.2)
    loss.backward()
    assert lp.grad is not None and torch.all(lp.grad[~MASK.bool()] == 0)


def test_value_loss_hand_computed_and_loop() -> None:
    values, old, ret = t([[1.0, 0.0]]), t([[0.0, 0.0]]), t([[0.0, 0.5]])
    loss, stats = value_loss(values, old, ret, torch.ones_like(ret), value_clip=0.2)
    # token 0: clipped 0.2 → max(1, 0.04) = 1; token 1: clipped 0 → max(0.25, 0.25) = 0.25
    assert float(loss) == pytest.approx(0.5 * (1.0 + 0.25) / 2)
    assert float(stats["vf_clipfrac"]) == 0.0
    v, o, r = rand(2, 4), rand(2, 4, seed=1), rand(2, 4, seed=2)
    loss, stats = value_loss(v, o, r, MASK, value_clip=0.2)
    terms, fr = [], []
    for b, i in masked_cells():
        vc = min(max(float(v[b, i]), float(o[b, i]) - 0.2), float(o[b, i]) + 0.2)
        e1, e2 = (float(v[b, i] - r[b, i])) ** 2, (vc - float(r[b, i])) ** 2
        terms.append(max(e1, e2))
        fr.append(e2 > e1)
    assert float(loss) == pytest.approx(0.5 * np.mean(terms))
    assert float(stats["vf_clipfrac"]) == pytest.approx(np.mean(fr))


def test_value_loss_unchanged_values_is_half_mse() -> None:
    v, r = rand(2, 4), rand(2, 4, seed=2)
    loss, stats = value_loss(v, v.clone(), r, MASK, value_clip=0.2)
    assert float(loss) == pytest.approx(0.5 * float(masked_mean((v - r) ** 2, MASK)))
    assert float(stats["vf_clipfrac"]) == 0.0


def test_entropy_from_logits() -> None:
    logits = torch.zeros(2, 4, 5, dtype=D)
    assert float(entropy_from_logits(logits, MASK)) == pytest.approx(math.log(5))
    logits = rand(2, 4, 5)
    p = torch.softmax(logits, -1).numpy()
    per_tok = -(p * np.log(p)).sum(-1)
    assert float(entropy_from_logits(logits, MASK)) == pytest.approx(per_tok[MASK.bool().numpy()].mean())
    peaked = torch.where(MASK.bool()[..., None], logits, t(0.0) + 1e4 * (torch.arange(5) == 0))
    assert float(entropy_from_logits(peaked, MASK)) == pytest.approx(float(entropy_from_logits(logits, MASK)))


def test_explained_variance() -> None:
    r = rand(2, 4)
    assert float(explained_variance(r, r, MASK)) == pytest.approx(1.0)
    assert float(explained_variance(torch.zeros_like(r) + 3.0, r, MASK)) == pytest.approx(0.0, abs=1e-12)
    v = rand(2, 4, seed=1)
    sel = MASK.bool()
    ref = 1 - np.var((r - v)[sel].numpy(), ddof=1) / np.var(r[sel].numpy(), ddof=1)
    assert float(explained_variance(v, r, MASK)) == pytest.approx(ref)


# ---- KL ----


def test_kl_estimators_hand_computed() -> None:
    lp, ref = t([math.log(0.5)]), t([math.log(0.25)])
    lr = math.log(2.0)
    assert float(kl_estimate(lp, ref, estimator="k1")) == pytest.approx(lr)
    assert float(kl_estimate(lp, ref, estimator="k2")) == pytest.approx(0.5 * lr**2)
    assert float(kl_estimate(lp, ref, estimator="k3")) == pytest.approx(0.5 - 1 - math.log(0.5))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_invariants(estimator: str) -> None:
    lp, ref = rand(3, 5), rand(3, 5, seed=1)
    assert torch.all(kl_estimate(lp, lp, estimator=estimator) == 0)  # type: ignore[arg-type]
    if estimator != "k1":
        assert torch.all(kl_estimate(lp, ref, estimator=estimator) >= 0)  # type: ignore[arg-type]


def test_k_estimators_unbiased_on_exact_expectation() -> None:
    p = torch.softmax(rand(6), 0)
    q = torch.softmax(rand(6, seed=1), 0)
    exact = float((p * (p.log() - q.log())).sum())
    for est in ("k1", "k3"):
        vals = kl_estimate(p.log(), q.log(), estimator=est)  # type: ignore[arg-type]
        assert float((p * vals).sum()) == pytest.approx(exact)


def test_adaptive_kl_controller() -> None:
    c = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    c.update(9.0, 32)  # error clipped to +0.2
    assert c.value == pytest.approx(0.2 * (1 + 0.2 * 32 / 10_000))
    c2 = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    c2.update(6.6, 32)  # error 0.1, inside the clip
    assert c2.value == pytest.approx(0.2 * (1 + 0.1 * 32 / 10_000))
    c3 = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    c3.update(0.0, 32)  # error clipped to -0.2
    assert c3.value == pytest.approx(0.2 * (1 - 0.2 * 32 / 10_000))
    c4 = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    c4.update(6.0, 32)
    assert c4.value == pytest.approx(0.2)


def test_adaptive_kl_loop_and_state_dict_round_trip() -> None:
    kls = [1.0, 8.0, 6.5, 30.0, 0.1]
    c = AdaptiveKLController(0.3, target=6.0, horizon=100)
    beta = 0.3
    for k in kls:
        c.update(k, 8)
        beta *= 1 + float(np.clip(k / 6.0 - 1, -0.2, 0.2)) * 8 / 100
    assert c.value == pytest.approx(beta)
    # a restore brings back the coefficient reached; target and horizon are the new controller's
    resumed = AdaptiveKLController(1.0, target=6.0, horizon=100)
    resumed.load_state_dict(c.state_dict())
    assert resumed.value == c.value
    c.update(7.0, 8)
    resumed.update(7.0, 8)
    assert resumed.value == c.value
    retargeted = AdaptiveKLController(1.0, target=3.0, horizon=50)
    retargeted.load_state_dict(c.state_dict())
    assert (retargeted.value, retargeted.target, retargeted.horizon) == (c.value, 3.0, 50)
    retargeted.update(3.3, 5)
    assert retargeted.value == pytest.approx(c.value * (1 + 0.1 * 5 / 50))


def test_fixed_kl_and_factory() -> None:
    f = FixedKLController(0.1)
    f.update(100.0, 32)
    assert f.value == 0.1
    g = FixedKLController(0.5)
    g.load_state_dict(f.state_dict())
    assert g.value == 0.1
    assert isinstance(make_kl_controller(PPOConfig()), AdaptiveKLController)
    fixed = make_kl_controller(PPOConfig(kl_mode="fixed", kl_coef=0.05))
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.05


# ---- rewards ----


def test_empathy_scores_hand_computed() -> None:
    lp = {"ER": t([math.log(0.5), 0.0]), "IP": t([math.log(0.4), math.log(0.1)]), "EX": t([0.0, 0.0])}
    s = empathy_scores(lp, weights={"ER": 1.0, "IP": 1.0, "EX": 1.0}, form="exp_neg_ce")
    assert s.tolist() == pytest.approx([0.2, 0.1])
    s = empathy_scores(lp, weights={"ER": 2.0, "IP": 1.0, "EX": 1.0}, form="neg_ce")
    assert s.tolist() == pytest.approx([2 * math.log(0.5) + math.log(0.4), math.log(0.1)])
    hits = {
        "ER": torch.tensor([True, False]),
        "IP": torch.tensor([True, True]),
        "EX": torch.tensor([False, False]),
    }
    s = empathy_scores(lp, weights={"ER": 2.0, "IP": 1.0, "EX": 1.0}, form="hit_rate", levels_hit=hits)
    assert s.tolist() == pytest.approx([3 / 4, 1 / 4])


def test_empathy_scores_product_of_probs_and_range() -> None:
    probs = {
        m: torch.rand(8, generator=torch.Generator().manual_seed(i), dtype=D) + 1e-3
        for i, m in enumerate("ABC")
    }
    lp = {m: p.log() for m, p in probs.items()}
    ones = dict.fromkeys("ABC", 1.0)
    s = empathy_scores(lp, weights=ones, form="exp_neg_ce")
    assert torch.allclose(s, probs["A"] * probs["B"] * probs["C"])
    assert torch.all((s > 0) & (s <= 1))
    # weights pair with mechanisms by name, not by position
    reordered = empathy_scores(lp, weights={"C": 0.0, "A": 1.0, "B": 0.0}, form="exp_neg_ce")
    assert torch.allclose(reordered, probs["A"])
    with pytest.raises(ValueError, match=r"weights name \['A', 'B'\], the scores \['A', 'B', 'C'\]"):
        empathy_scores(lp, weights={"A": 1.0, "B": 1.0}, form="neg_ce")
    with pytest.raises(ValueError, match="levels_hit"):
        empathy_scores(lp, weights=ones, form="hit_rate")


def test_running_moments_vs_numpy_and_round_trip() -> None:
    batches = [rand(5, seed=i) * (i + 1) + i for i in range(4)]
    rm = RunningMoments()
    bm, bs = rm.update(batches[0])
    assert bm == pytest.approx(float(batches[0].mean())) and bs == pytest.approx(float(batches[0].std()))
    for b in batches[1:3]:
        rm.update(b)
    state = rm.state_dict()
    rm.update(batches[3])
    allx = torch.cat(batches).numpy()
    assert rm.mean == pytest.approx(allx.mean())
    assert rm.std == pytest.approx(allx.std(ddof=1))
    resumed = RunningMoments()
    resumed.load_state_dict(state)
    resumed.update(batches[3])
    assert resumed.state_dict() == rm.state_dict()


def test_running_moments_large_offset_is_stable() -> None:
    rm = RunningMoments()
    for i in range(5):
        rm.update(1e8 + rand(10, seed=i))
    allx = np.concatenate([(1e8 + rand(10, seed=i)).numpy() for i in range(5)])
    assert rm.std == pytest.approx(allx.std(ddof=1), rel=1e-6)


def test_normalize_scores_trl_semantics() -> None:
    s = t([1.0, 2.0, 3.0])
    eps = torch.finfo(D).eps
    rm = RunningMoments()
    out = normalize_scores(s, rm, normalize=True, scale=True)
    # first batch replaces the prior: mean 2, std 1
    assert out.tolist() == pytest.approx([-1 / (1 + eps), 0.0, 1 / (1 + eps)])
    rm2 = RunningMoments()
    assert normalize_scores(s, rm2, normalize=False, scale=True).tolist() == pytest.approx([1.0, 2.0, 3.0])
    rm3 = RunningMoments()
    assert torch.equal(normalize_scores(s, rm3, normalize=True, scale=False), s)
    assert rm3.count == 1e-24  # untouched, as in trl


def test_kl_shaped_rewards_hand_computed() -> None:
    lp = t([[-1.0, -2.0, -1.0, 0.0], [-0.5, -0.5, 0.0, 0.0]])
    ref = t([[-1.5, -2.0, -0.5, 9.0], [-0.5, -1.0, 9.0, 9.0]])
    rewards, kl = kl_shaped_rewards(t([10.0, 20.0]), lp, ref, MASK, kl_coef=0.1, estimator="k1")
    assert torch.allclose(kl, t([[0.5, 0.0, -0.5, 0.0], [0.0, 0.5, 0.0, 0.0]]))
    assert torch.allclose(rewards, t([[-0.05, 0.0, 10.05, 0.0], [0.0, 19.95, 0.0, 0.0]]))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_shaped_rewards_loop_and_invariants(estimator: str) -> None:
    mask = t([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]])
    lp, ref, scores = rand(3, 4), rand(3, 4, seed=1), rand(3, seed=2)
    rewards, kl = kl_shaped_rewards(scores, lp, ref, mask, kl_coef=0.2, estimator=estimator)  # type: ignore[arg-type]
    for b in range(3):
        n = int(mask[b].sum())
        for i in range(4):
            k = float(kl_estimate(lp[b, i : i + 1], ref[b, i : i + 1], estimator=estimator)) if i < n else 0.0  # type: ignore[arg-type]
            exp = -0.2 * k + (float(scores[b]) if i == n - 1 else 0.0)
            assert float(rewards[b, i]) == pytest.approx(exp)
    assert rewards.sum(-1).tolist() == pytest.approx((scores - 0.2 * kl.sum(-1)).tolist())
    same, kl0 = kl_shaped_rewards(scores, lp, lp, mask, kl_coef=0.2, estimator=estimator)  # type: ignore[arg-type]
    assert torch.all(kl0 == 0) and torch.allclose(same.sum(-1), scores)


def test_kl_shaped_rewards_empty_row_rejected() -> None:
    with pytest.raises(ValueError, match="no unmasked"):
        kl_shaped_rewards(
            t([1.0]), t([[0.0, 0.0]]), t([[0.0, 0.0]]), t([[0, 0]]), kl_coef=0.1, estimator="k1"
        )
