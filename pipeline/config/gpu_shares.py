"""GPU shares of the PPO roles: each role's share of one GPU, how many instances of it run, whether they
pack onto ``resources.num_gpus`` GPUs (first-fit decreasing), and the checks that name the key to change.
"""

from __future__ import annotations

from pipeline.config.deployment import ResourcesConfig
from pipeline.config.schema import ConfigError, LearnerConfig, RewardConfig, RolloutConfig, require

PPO_ROLES: tuple[str, str, str, str] = ("rollout worker", "reward scorer", "reference policy", "learner")
"""The PPO roles, in placement order."""

SHARE_KEYS = {
    "rollout worker": "resources.rollout_gpus",
    "reward scorer": "resources.reward_gpus",
    "reference policy": "resources.reference_gpus",
    "learner": "resources.learner_gpus",
}
"""The key that sets each role's share."""


def role_gpu_shares(res: ResourcesConfig, learner: LearnerConfig) -> dict[str, float]:
    """GPU share of one instance of each PPO role (all 0 without ``resources.use_gpu``)."""
    if not res.use_gpu:
        return dict.fromkeys(PPO_ROLES, 0.0)

    def share(value: float | None, default: float) -> float:
        return default if value is None else value

    learner_default = 1.0 if learner.num_ranks > 1 else res.role_gpus
    return {
        "rollout worker": share(res.rollout_gpus, res.role_gpus),
        "reward scorer": share(res.reward_gpus, res.role_gpus),
        "reference policy": share(res.reference_gpus, res.role_gpus),
        "learner": share(res.learner_gpus, learner_default),
    }


def role_counts(rollout: RolloutConfig, reward: RewardConfig, learner: LearnerConfig) -> dict[str, int]:
    """Instances of each PPO role."""
    return {
        "rollout worker": rollout.num_workers,
        "reward scorer": reward.num_scorers,
        "reference policy": 1,
        "learner": learner.num_ranks,
    }


def pack_gpu_shares(shares: list[float], gpus: int) -> list[list[float]] | None:
    """First-fit decreasing of GPU ``shares`` onto ``gpus`` GPUs of capacity 1; ``None`` when they do not fit."""
    bins: list[list[float]] = [[] for _ in range(gpus)]
    for share in sorted(shares, reverse=True):
        for b in bins:
            if sum(b) + share <= 1.0 + 1e-9:
                b.append(share)
                break
        else:
            return None
    return bins


def check_gpu_shares(res: ResourcesConfig, shares: dict[str, float], counts: dict[str, int]) -> None:
    """Each share in (0, 1]; a multi-rank learner a GPU per rank; with ``resources.num_gpus``, that every
    instance's share packs onto that many GPUs."""
    for key in ("rollout_gpus", "reward_gpus", "reference_gpus", "learner_gpus"):
        value = getattr(res, key)
        require(
            value is None or 0 < value <= 1,
            f"resources.{key}",
            value,
            "must be in (0, 1] (a role runs on one GPU) or null",
            "use null (= resources.role_gpus), 1 or a fraction like 0.25",
        )
    require(
        res.num_gpus is None or res.num_gpus >= 1,
        "resources.num_gpus",
        res.num_gpus,
        "must be >= 1 or null",
        "use null (every GPU of the node) or the GPUs the run may use",
    )
    if not res.use_gpu:
        return
    ranks = counts["learner"]
    require(
        ranks == 1 or shares["learner"] > 0.5,
        "resources.learner_gpus",
        shares["learner"],
        f"learner.num_ranks={ranks} ranks talk over NCCL, which refuses two ranks on one GPU; "
        "a share of 0.5 or less lets Ray place two ranks on the same GPU",
        "set resources.learner_gpus=1 (or learner.num_ranks=1 to share a GPU with other roles)",
    )
    if res.num_gpus is None:
        return
    instances = [shares[role] for role, n in counts.items() for _ in range(n)]
    if pack_gpu_shares(instances, res.num_gpus) is None:
        parts = ", ".join(f"{n} {role} x {shares[role]:g} ({SHARE_KEYS[role]})" for role, n in counts.items())
        raise ConfigError(
            f"resources.num_gpus={res.num_gpus}: the PPO roles' GPU shares do not fit: {parts}; total "
            f"{sum(instances):g} GPUs, and the shares on one GPU may add up to at most 1. Fix: lower the "
            "shares or the worker counts (rollout.num_workers, reward.num_scorers, learner.num_ranks), or "
            "raise resources.num_gpus."
        )
