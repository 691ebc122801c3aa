"""From identifier outputs to per-token PPO rewards: empathy scores, running score normalisation
(trl 0.9.6 ``RunningMoments``) and KL-shaped rewards with the score on each row's last token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from pipeline.ppo.kl import KLEstimator, kl_estimate

ScoreForm = Literal["exp_neg_ce", "neg_ce", "hit_rate"]


def empathy_scores(
    gold_logprobs: Mapping[str, Tensor],
    *,
    weights: Mapping[str, float],
    form: ScoreForm,
    levels_hit: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Per-response empathy score ``(B,)`` from ``log p_m(l_m)`` per mechanism (each ``(B,)``).

    ``weights`` maps the same mechanism names to ``w_m`` (``RewardWeights.by_mechanism``). With
    ``CE_m = −log p_m(l_m)``: ``exp_neg_ce``: ``exp(−Σ w_m CE_m)`` (EmpRL, in (0, 1]); ``neg_ce``:
    ``−Σ w_m CE_m``; ``hit_rate``: ``Σ w_m hit_m / Σ w_m`` with ``levels_hit[m]`` ``(B,)`` bool
    (argmax == gold).
    """
    names = list(gold_logprobs)
    if set(weights) != set(names):
        raise ValueError(f"empathy_scores: weights name {sorted(weights)}, the scores {sorted(names)}")
    if not names:
        raise ValueError("empathy_scores: no mechanisms")
    if form == "hit_rate":
        if levels_hit is None:
            raise ValueError("empathy_scores: form 'hit_rate' needs levels_hit")
        total_w = float(sum(weights.values()))
        if total_w <= 0:
            raise ValueError(f"empathy_scores: weights must sum to > 0; got {dict(weights)}")
        ref = gold_logprobs[names[0]]
        hits = sum(weights[m] * levels_hit[m].to(ref.dtype) for m in names)
        return torch.as_tensor(hits, dtype=ref.dtype) / total_w
    weighted_ce = sum(-weights[m] * gold_logprobs[m] for m in names)
    assert isinstance(weighted_ce, Tensor)
    if form == "exp_neg_ce":
        return torch.exp(-weighted_ce)
    if form == "neg_ce":
        return -weighted_ce
    raise ValueError(f"empathy_scores: unknown form {form!r}")


class RunningMoments:
    """Running mean and std of all scores seen so far (Chan et al. parallel update; trl 0.9.6).

    Starts as in trl: ``mean = 0``, ``var = 1``, ``std = 1``, ``count = 1e-24`` (so the first
    batch replaces the prior). ``var`` is the population variance; ``std`` the Bessel-corrected one.
    Kept in float64 Python scalars.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 1.0
        self.std = 1.0
        self.count = 1e-24

    def update(self, x: Tensor) -> tuple[float, float]:
        """Fold in the values of ``x`` (any shape, ≥ 2 values); return the batch's ``(mean, std)``
        (std unbiased)."""
        xs = x.detach().to(torch.float64).flatten()
        n = xs.numel()
        if n < 2:
            raise ValueError(f"RunningMoments.update: need at least 2 values; got {n}")
        batch_var, batch_mean_t = torch.var_mean(xs, unbiased=False)
        batch_mean = float(batch_mean_t)
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + float(batch_var) * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.std = math.sqrt(self.var * total / (total - 1))
        self.count = total
        return batch_mean, math.sqrt(float(batch_var) * n / (n - 1))

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "std": self.std, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mean = float(state["mean"])
        self.var = float(state["var"])
        self.std = float(state["std"])
        self.count = float(state["count"])


def normalize_scores(scores: Tensor, moments: RunningMoments, *, normalize: bool, scale: bool) -> Tensor:
    """Running normalisation of ``scores`` ``(B,)``, exactly as trl 0.9.6 ``PPOTrainer.step``.

    If ``scale`` (trl ``use_score_scaling``): ``moments.update(scores)`` first, then with ``normalize``
    (``use_score_norm``) ``(s − running_mean) / (running_std + eps)``, else ``s / (running_std + eps)``;
    ``eps`` is the dtype's machine epsilon. As in trl, ``normalize`` alone (without ``scale``) does
    nothing and the moments are not updated; neither flag returns ``scores`` unchanged.
    """
    if not scale:
        return scores
    moments.update(scores)
    denom = moments.std + torch.finfo(scores.dtype).eps
    if normalize:
        return (scores - moments.mean) / denom
    return scores / denom


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last unmasked token of each row of ``mask`` ``(B, T_r)``; ``(B,)`` int64."""
    m = mask.bool()
    if not bool(m.any(dim=-1).all()):
        raise ValueError("last_token_index: a row of the mask has no unmasked token")
    positions = torch.arange(m.shape[-1], device=m.device).expand_as(m)
    return torch.where(m, positions, -1).max(dim=-1).values


def kl_shaped_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    *,
    kl_coef: float,
    estimator: KLEstimator,
) -> tuple[Tensor, Tensor]:
    """Per-token rewards ``r_t = −β · kl_t``, plus ``scores[b]`` on row b's last unmasked token.

    ``scores`` ``(B,)``; ``logprobs``, ``ref_logprobs``, ``mask`` ``(B, T_r)``; ``kl_t`` from
    :func:`pipeline.ppo.kl.kl_estimate`. Returns ``(rewards, kl)``, each ``(B, T_r)`` and 0 under the
    mask (trl 0.9.6 ``compute_rewards``).
    """
    m = mask.to(logprobs.dtype)
    kl = kl_estimate(logprobs, ref_logprobs, estimator=estimator) * m
    rewards = -kl_coef * kl
    last = last_token_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards, kl
