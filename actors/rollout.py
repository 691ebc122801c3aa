"""Rollout worker role: holds a copy of the policy and samples responses for prompt batches.

Consumes :class:`~pipeline.ppo.experience.PromptBatch` shards and new weights (an object-store
reference plus a policy version, the policy with its value head); produces
:class:`~pipeline.ppo.experience.Rollouts` with token ids, masks, the sampler's log-probabilities and
the value head's estimates (PPO's old log-probabilities and values when the versions match), decoded
text and the version. Resources:
``resources.rollout_cpus`` CPUs (or one GPU) and ``resources.torch_threads`` threads.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
import torch

from actors.placement import RoleProcess
from pipeline.config import RolloutConfig
from pipeline.generation import sample_responses
from pipeline.models import load_policy
from pipeline.ppo.experience import PromptBatch, Rollouts

logger = logging.getLogger(__name__)


class RolloutWorker(RoleProcess):
    """Samples responses with the latest published policy weights; usable in-process or as an actor."""

    def __init__(
        self, policy_dir: str | Path, cfg: RolloutConfig, torch_threads: int = 1, device: str = "cpu"
    ) -> None:
        torch.set_num_threads(torch_threads)
        model, self.tokenizer = load_policy(policy_dir)
        self.model = model.to(device)
        self.model.train(False)
        self.cfg, self.device, self.version = cfg, device, 0

    def set_weights(self, weights: list[Any] | dict[str, torch.Tensor], version: int) -> int:
        """Load the policy-with-value-head state dict (or ``[ref]`` to it in the object store) and adopt ``version``."""
        state = ray.get(weights[0]) if isinstance(weights, list) else weights
        self.model.load_state_dict(state)
        self.version = version
        return version

    def generate(self, prompts: PromptBatch) -> Rollouts:
        """One sampled response per prompt (see :func:`pipeline.generation.sample_responses`)."""
        bf16 = self.cfg.precision == "bf16"
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=bf16):
            rollouts = sample_responses(
                self.model, self.tokenizer, _to(prompts, self.device), self.cfg, version=self.version
            )
        return _to_cpu(rollouts)


def _to(prompts: PromptBatch, device: str) -> PromptBatch:
    return replace(
        prompts, prompt_ids=prompts.prompt_ids.to(device), prompt_mask=prompts.prompt_mask.to(device)
    )


def _to_cpu(rollouts: Rollouts) -> Rollouts:
    return replace(
        rollouts,
        prompts=_to(rollouts.prompts, "cpu"),
        response_ids=rollouts.response_ids.cpu(),
        response_mask=rollouts.response_mask.cpu(),
        logprobs=rollouts.logprobs.cpu(),
    )
