"""PPO losses and diagnostics over masked response tokens: clipped policy surrogate, clipped value
loss, entropy and explained variance. Equations follow trl 0.9.6 ``PPOTrainer.loss`` (Schulman et
al. 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.ppo.advantages import masked_mean, masked_var


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *, clip_ratio: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate ``mean_m(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)))`` with ``ρ = exp(log π − log π_old)``.

    All inputs ``(B, T_r)``. Returns the scalar loss and detached stats: ``clipfrac`` (share of
    tokens where the clipped term is the larger), ``approx_kl = ½ mean_m((log π − log π_old)²)``
    (the k2 estimator, as trl's ``approxkl``) and ``policy_kl = mean_m(log π_old − log π)``
    (trl's ``policykl``).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    losses = -advantages * ratio
    losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    loss = masked_mean(torch.maximum(losses, losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((losses_clipped > losses).to(logprobs.dtype), mask),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, mask),
            "policy_kl": masked_mean(-log_ratio, mask),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, value_clip: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss ``½ mean_m(max((V − R)², (clip(V, V_old ± ε_v) − R)²))`` (trl 0.9.6).

    All inputs ``(B, T_r)``. Stats (detached): ``vf_clipfrac``, the share of tokens where the
    clipped error is the larger.
    """
    values_clipped = torch.clamp(values, old_values - value_clip, old_values + value_clip)
    err = (values - returns) ** 2
    err_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((err_clipped > err).to(values.dtype), mask)}
    return loss, stats


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Masked mean token entropy (scalar) of the categorical distributions in ``logits`` ``(B, T_r, V)``.

    ``H_t = logsumexp(z_t) − Σ_v softmax(z_t)_v z_{t,v}``, averaged over positions where ``mask``
    ``(B, T_r)`` is 1.
    """
    probs = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
    return masked_mean(entropy, mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 − Var_m(R − V) / Var_m(R)`` over masked tokens (``(B, T_r)`` each; scalar out).

    1 is a perfect value function, 0 no better than a constant, negative worse.
    """
    return 1.0 - masked_var(returns - values, mask) / masked_var(returns, mask)
