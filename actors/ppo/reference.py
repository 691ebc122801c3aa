"""Reference policy role: the frozen SFT policy giving reference log-probabilities of responses.

Consumes (prompt ids, prompt mask, response ids) of a rollout shard; produces ``(B, T_r)``
``log π_ref`` of each response token (float32), for the KL penalty. Never updated; its weights are
bf16 or fp32 (``resources.frozen_precision``). Resources: ``resources.reference_cpus`` CPUs and
``resources.reference_gpus`` of a GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from actors.cluster.placement import RoleProcess, frozen_dtype
from pipeline.models import load_policy, use_fastest_attention
from pipeline.ppo.iteration import response_forward


class ReferenceWorker(RoleProcess):
    """The frozen reference policy; usable in-process or as an actor."""

    def __init__(
        self, policy_dir: str | Path, torch_threads: int = 1, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        torch.set_num_threads(torch_threads)
        model, _ = load_policy(policy_dir)
        dtype = frozen_dtype(precision)
        self.model = model.to(device, dtype=dtype).eval().requires_grad_(False)
        use_fastest_attention(self.model, device)
        self.start_id = int(model.config.decoder_start_token_id)
        self.device = device

    @torch.no_grad()
    def logprobs(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T_r) reference log-probabilities of ``response_ids`` given the prompts (0 past
        ``response_mask``, which skips computing there)."""
        d = self.device
        mask = response_mask.to(d) if response_mask is not None else None
        logprobs, _, _ = response_forward(
            self.model, prompt_ids.to(d), prompt_mask.to(d), response_ids.to(d), start_id=self.start_id,
            response_mask=mask,
        )  # fmt: skip
        return logprobs.float().cpu()
