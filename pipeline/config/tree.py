"""The whole config tree: the root :class:`Config` holding every section, validated as one whenever it is
built, with its plain-dict form (:func:`from_dict` / :meth:`Config.to_dict`) and dotted overrides.

It sits above the schema and the rules: :mod:`~pipeline.config.schema` and
:mod:`~pipeline.config.deployment` define the sections, :mod:`~pipeline.config.validation` checks them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.config import validation as rules
from pipeline.config.deployment import ResourcesConfig, ServeConfig
from pipeline.config.dotted import apply_overrides, build, plain
from pipeline.config.gpu_shares import role_counts, role_gpu_shares
from pipeline.config.schema import (
    DataConfig,
    IdentifiersConfig,
    LearnerConfig,
    ModelConfig,
    PPOConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    SFTConfig,
)


@dataclass(frozen=True)
class Config:
    """The whole configuration of an EmpRL run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    identifiers: IdentifiersConfig = field(default_factory=IdentifiersConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    run: RunConfig = field(default_factory=RunConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def weight_sync(self) -> Literal["object_store", "collective"]:
        """The resolved ``learner.weight_sync``: ``auto`` is ``collective`` on GPUs, else ``object_store``."""
        mode = self.learner.weight_sync
        if mode == "auto":
            return "collective" if self.resources.use_gpu else "object_store"
        return "collective" if mode == "collective" else "object_store"

    @property
    def ppo_gpu_shares(self) -> dict[str, float]:
        """GPU share of one instance of each PPO role (all 0 without ``resources.use_gpu``)."""
        return role_gpu_shares(self.resources, self.learner)

    @property
    def in_process_roles(self) -> bool:
        """The resolved ``resources.in_process_roles``: true only on the CPU, with the object-store weight
        sync and no ``resources.role_nodes`` pin of the rollout, reward or reference role."""
        res = self.resources
        pinned = set(res.role_node_resources) & {"rollout worker", "reward scorer", "reference policy"}
        return res.in_process_roles and not res.use_gpu and self.weight_sync == "object_store" and not pinned

    @property
    def in_process_learner(self) -> bool:
        """Whether the PPO learner runs in the driver's process as well: with :attr:`in_process_roles`, one
        learner rank (a process group of one, no peer to wait for) and no ``role_nodes`` pin of the learner."""
        pinned = "learner" in self.resources.role_node_resources
        return self.in_process_roles and self.learner.num_ranks == 1 and not pinned

    @property
    def ppo_role_counts(self) -> dict[str, int]:
        """Instances of each PPO role."""
        return role_counts(self.rollout, self.reward, self.learner)

    @property
    def ppo_minibatches_per_epoch(self) -> int:
        """Optimiser steps per PPO epoch."""
        return self.ppo.rollout_batch_size // self.ppo.mini_batch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), the inverse of :func:`from_dict`."""
        tree: dict[str, Any] = plain(dataclasses.asdict(self))
        return tree

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> Config:
        """A copy with dotted overrides applied (a Tune trial is exactly this)."""
        return from_dict(apply_overrides(self.to_dict(), overrides))


def from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a nested dict, checking every key and type."""
    return typing.cast(Config, build(Config, data, ""))


def validate(cfg: Config) -> None:
    """Cross-field and range checks; raises :class:`~pipeline.config.schema.ConfigError` on the first violation."""
    rules.check_ppo(cfg.ppo, cfg.learner)
    rules.check_rollout(cfg.rollout)
    rules.check_reward(cfg.reward)
    rules.check_data(cfg.data)
    rules.check_model(cfg.model)
    rules.check_identifiers(cfg.identifiers)
    rules.check_trainer("sft", cfg.sft)
    rules.check_trainer("identifiers", cfg.identifiers)
    rules.check_engines(
        cfg.identifiers.engine, cfg.sft.engine, cfg.learner.engine, use_gpu=cfg.resources.use_gpu
    )
    rules.check_sft(cfg.sft)
    rules.check_serve(cfg.serve)
    rules.check_resources(cfg.resources, cfg.learner, cfg.ppo_gpu_shares, cfg.ppo_role_counts)
