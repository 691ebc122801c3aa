"""Masked statistics and generalised advantage estimation for PPO on variable-length responses.

Semantics follow trl 0.9.6 (``trl.core.masked_*`` and ``PPOTrainer.compute_advantages``); the one
difference is that outputs are zero under the mask, so padding never leaks into later computations.
"""

from __future__ import annotations

import torch
from torch import Tensor

WHITEN_EPS = 1e-8
"""Added to the variance before the inverse square root in :func:`masked_whiten` (as in trl)."""


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1.

    ``x`` and ``mask`` share a shape, e.g. ``(B, T_r)``. ``dim=None`` gives a scalar
    ``Σ x·m / Σ m``; an int reduces that dimension only.
    """
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum()
    return (x * m).sum(dim) / m.sum(dim)


def masked_var(x: Tensor, mask: Tensor, *, unbiased: bool = True) -> Tensor:
    """Scalar variance of ``x`` over the masked positions (``(B, T_r)`` in, ``()`` out).

    ``var = mean_m((x - mean_m(x))²)``, times the Bessel factor ``n / (n - 1)`` when ``unbiased``
    (``n = Σ m``), as in trl 0.9.6.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n <= 1:
            raise ValueError(f"masked_var: unbiased variance needs at least 2 unmasked values; got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True) -> Tensor:
    """Whiten ``x`` (``(B, T_r)``) with its masked mean and unbiased masked variance.

    ``(x - μ) / sqrt(σ² + 1e-8)``; with ``shift_mean=False`` the mean is added back
    (``(x - μ) / σ + μ``: scale only, trl's reward whitening). Masked positions are set to 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    ``rewards``, ``values``, ``mask``: ``(B, T_r)``; the mask marks each row's response tokens
    (right padding). Right to left: ``δ_t = r_t + γ V_{t+1} − V_t`` (``V_{T} = 0`` and values and
    rewards under the mask count as 0, so the value after a row's last token is 0) and
    ``A_t = δ_t + γ λ A_{t+1}``. Returns ``(advantages, returns)``, both ``(B, T_r)``, with
    ``returns = advantages + values``; masked positions are 0. Advantages are not whitened here
    (trl whitens inside ``compute_advantages``; call :func:`masked_whiten` for that).
    """
    m = mask.to(values.dtype)
    values = values * m
    rewards = rewards * m
    t_r = rewards.shape[-1]
    last = torch.zeros_like(rewards[..., 0])
    reversed_adv: list[Tensor] = []
    for t in reversed(range(t_r)):
        next_values = values[..., t + 1] if t < t_r - 1 else torch.zeros_like(last)
        delta = rewards[..., t] + gamma * next_values - values[..., t]
        last = (delta + gamma * lam * last) * m[..., t]
        reversed_adv.append(last)
    advantages = torch.stack(reversed_adv[::-1], dim=-1)
    returns = (advantages + values) * m
    return advantages, returns
