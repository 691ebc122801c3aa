"""Per-token KL estimators and the KL-coefficient controllers of PPO with a reference policy.

Estimators after Schulman (2020), "Approximating KL divergence"; the adaptive controller is
Ziegler et al. (2019) exactly as in trl 0.9.6 ``AdaptiveKLController``.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from pipeline.config import PPOConfig

KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, *, estimator: KLEstimator) -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from sampled-token log-probabilities, ``(B, T_r)`` each.

    ``k1 = log π − log π_ref`` (unbiased, can be negative; trl's ``"kl"``, the paper's);
    ``k2 = ½ (log π − log π_ref)²`` (trl's ``"mse"``); ``k3 = (r − 1) − log r`` with
    ``r = π_ref / π`` (unbiased and ≥ 0). No mask: callers mask the result.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        log_r = -log_ratio
        return torch.expm1(log_r) - log_r
    raise ValueError(f"kl_estimate: unknown estimator {estimator!r}; expected k1, k2 or k3")


class KLController(Protocol):
    """A KL coefficient β that may adapt to the measured KL."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class AdaptiveKLController:
    """Adaptive β (Ziegler et al. 2019; trl 0.9.6).

    ``e = clip(KL / target − 1, −0.2, 0.2)``; ``β ← β · (1 + e · n_steps / horizon)``.
    """

    def __init__(self, init_kl_coef: float, *, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController: target and horizon must be > 0; got {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adapt β to the mean KL of the last ``n_steps`` rollouts (trl passes the batch size)."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the coefficient reached; target and horizon stay those of the config in force."""
        self.value = float(state["value"])


class FixedKLController:
    """Constant β; ``update`` does nothing."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient is fixed."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


def make_kl_controller(cfg: PPOConfig) -> AdaptiveKLController | FixedKLController:
    """The controller ``cfg.kl_mode`` asks for, starting at ``cfg.kl_coef``."""
    if cfg.kl_mode == "adaptive":
        return AdaptiveKLController(cfg.kl_coef, target=cfg.kl_target, horizon=cfg.kl_horizon)
    if cfg.kl_mode == "fixed":
        return FixedKLController(cfg.kl_coef)
    raise ValueError(f"make_kl_controller: unknown kl_mode {cfg.kl_mode!r}")
