"""Rollout worker role: holds a copy of the policy and samples responses for prompt batches.

Consumes :class:`~pipeline.ppo.experience.PromptBatch` shards and new weights with a policy version
(the policy with its value head: an object-store reference, or a broadcast from learner rank 0 received
in place over the weight-sync group, :mod:`actors.ppo.weight_sync`); produces
:class:`~pipeline.ppo.experience.Rollouts` with token ids, masks, the sampler's log-probabilities and
the value head's estimates (PPO's old log-probabilities and values when the versions match), decoded
text and the version. Resources:
``resources.rollout_cpus`` CPUs, ``resources.rollout_gpus`` of a GPU and ``resources.rollout_threads``
threads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray
import torch

from actors.cluster.placement import RoleProcess
from actors.ppo.weight_sync import WeightGroup, checksum, device_id, layout, sync_tensors
from pipeline.config import RolloutConfig
from pipeline.generation import sample_responses
from pipeline.models import load_policy, use_fastest_attention
from pipeline.ppo.experience import PromptBatch, Rollouts, moved_to

logger = logging.getLogger(__name__)


class RolloutWorker(RoleProcess):
    """Samples responses with the latest published policy weights; usable in-process or as an actor."""

    def __init__(
        self, policy_dir: str | Path, cfg: RolloutConfig, torch_threads: int = 1, device: str = "cpu"
    ) -> None:
        torch.set_num_threads(torch_threads)
        model, self.tokenizer = load_policy(policy_dir)
        self.model = model.to(device)
        use_fastest_attention(self.model, device)
        self.model.train(False)
        self.cfg, self.device, self.version = cfg, device, 0
        self._weights: WeightGroup | None = None

    def set_weights(self, weights: list[Any] | dict[str, torch.Tensor], version: int) -> int:
        """Load the policy-with-value-head state dict (or ``[ref]`` to it in the object store) and adopt ``version``."""
        state = ray.get(weights[0]) if isinstance(weights, list) else weights
        self.model.load_state_dict(state)
        self.version = version
        return version

    def sync_device_id(self) -> str | None:
        """The UUID of this worker's GPU (``None`` on the CPU)."""
        return device_id(torch.device(self.device))

    def join_sync(self, spec: dict[str, Any]) -> str:
        """Join (leaving any older one) the weight-sync group ``spec`` describes; the model's layout digest."""
        if self._weights is not None:
            self._weights.close()
        own_host = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self._weights = WeightGroup.join(**spec, own_host=own_host)
        return layout(self.model)

    def receive_weights(self, version: int, bucket_bytes: int) -> int:
        """Receive learner rank 0's broadcast into this worker's parameters (in place); adopt ``version``."""
        if self._weights is None:
            raise RuntimeError(
                "rollout worker: in no weight-sync group yet (a replacement joins when the group is rebuilt)"
            )
        self._weights.broadcast(sync_tensors(self.model), bucket_bytes=bucket_bytes)
        self.version = version
        return version

    def weights_checksum(self) -> str:
        """SHA-256 of this worker's policy and value-head weights (:func:`actors.ppo.weight_sync.checksum`)."""
        return checksum(self.model)

    def generate(self, prompts: PromptBatch) -> Rollouts:
        """One sampled response per prompt (see :func:`pipeline.generation.sample_responses`)."""
        bf16 = self.cfg.precision == "bf16"
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=bf16):
            rollouts = sample_responses(
                self.model, self.tokenizer, moved_to(prompts, self.device), self.cfg, version=self.version
            )
        return moved_to(rollouts, "cpu")
