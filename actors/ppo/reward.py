"""Reward scorer role: the three empathy identifiers turning (context, response, gold levels) into scores.

Consumes the contexts, decoded responses and gold ER/IP/EX levels of a rollout shard (text, because
the identifiers have their own tokenizers); produces :class:`~pipeline.ppo.experience.RewardScores`:
the configured empathy score (paper: ``exp(−Σ w_m CE_m)``) and per-mechanism gold-level
probability, hit and predicted level (float32; the identifiers' weights are bf16 or fp32 as
``resources.frozen_precision`` says). Resources: ``resources.reward_cpus`` CPUs and
``resources.reward_gpus`` of a GPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from actors.cluster.placement import RoleProcess, frozen_dtype
from pipeline import storage
from pipeline.config import MECHANISMS, IdentifiersConfig, RewardConfig
from pipeline.ppo.experience import IntArray, RewardScores
from pipeline.ppo.rewards import empathy_scores
from pipeline.scoring import EmpathyScorer

logger = logging.getLogger(__name__)


class RewardWorker(RoleProcess):
    """Scores responses against gold empathy levels; usable in-process or as an actor."""

    def __init__(
        self,
        identifiers_dir: str | Path,
        identifiers: IdentifiersConfig,
        reward: RewardConfig,
        torch_threads: int = 1,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        torch.set_num_threads(torch_threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        for m in MECHANISMS:  # this node's copy of each identifier (a no-op for a plain local folder)
            storage.fetch(storage.local_path(str(identifiers_dir)) / m)
        self.scorer = EmpathyScorer.from_config(identifiers_dir, identifiers, device, mechanisms=MECHANISMS)
        dtype = frozen_dtype(precision)
        for model in self.scorer.identifiers.values():
            model.to(dtype=dtype)
        self.reward = reward

    def score(
        self, contexts: Sequence[str], responses: Sequence[str], gold_levels: Mapping[str, IntArray]
    ) -> RewardScores:
        """Scores of ``B`` responses; ``gold_levels`` maps ER/IP/EX to (B,) levels."""
        levels = self.scorer.score(contexts, responses)
        gold = {m: np.array(gold_levels[m], dtype=np.int64) for m in levels.mechanisms}
        gold_logprob = {m: torch.from_numpy(v) for m, v in levels.gold_logprob(gold).items()}
        predicted = {m: torch.from_numpy(levels.levels[m]) for m in levels.mechanisms}
        hit = {m: (predicted[m] == torch.from_numpy(gold[m])).float() for m in levels.mechanisms}
        scores = empathy_scores(
            gold_logprob, weights=self.reward.weights.by_mechanism, form=self.reward.form, levels_hit=hit
        )
        return RewardScores(
            scores=scores.float(),
            gold_prob={m: v.exp().float() for m, v in gold_logprob.items()},
            hit=hit,
            levels=predicted,
        )
