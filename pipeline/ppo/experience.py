"""The typed batches PPO roles exchange: prompts → rollouts → train batch.

Each is a frozen dataclass of CPU tensors (right-padded, explicit masks) plus the text that must
cross the tokenizer boundary, and knows how to select rows and concatenate parts. Every rollout
carries the policy version that generated it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

IntArray = npt.NDArray[np.int64]
T = TypeVar("T")


def pad_stack(rows: Sequence[Tensor], *, value: float) -> Tensor:
    """Right-pad 2-D tensors ``(B_i, T_i)`` to the longest ``T`` and stack them into ``(Σ B_i, max T)``."""
    width = max(t.shape[1] for t in rows)
    padded = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in rows]
    return torch.cat(padded, dim=0)


def trim_columns(*tensors: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
    """Drop trailing columns where ``mask`` ``(B, T)`` is 0 on every row, from each ``(B, T)`` tensor."""
    width = int(mask.sum(0).nonzero().max()) + 1 if bool(mask.any()) else 1
    return tuple(t[:, :width] for t in tensors)


def moved_to(batch: T, device: torch.device | str) -> T:
    """``batch`` (a dataclass of this module) with every tensor field on ``device``, nested batches
    included; text, arrays and ``None`` fields unchanged. Generic, so that no field is ever left
    behind on a GPU when a role hands its results back."""
    changes: dict[str, Any] = {}
    for f in fields(batch):  # type: ignore[arg-type]
        value = getattr(batch, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = value.to(device)
        elif hasattr(value, "__dataclass_fields__"):
            changes[f.name] = moved_to(value, device)
    return replace(batch, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class PromptBatch:
    """Prompts for one generation call: tokenised contexts, their text and the gold levels."""

    index: IntArray
    """(B,) rows of the prompt dataset."""
    contexts: tuple[str, ...]
    """Context text of each prompt (the identifiers re-tokenise it)."""
    gold_levels: dict[str, IntArray]
    """Mechanism -> (B,) gold level (0/1/2) of the ED listener response, from the label job."""
    prompt_ids: Tensor
    """(B, T_p) policy token ids, right-padded."""
    prompt_mask: Tensor
    """(B, T_p) 1 for prompt tokens."""
    seed: int
    """Seed of the sampler for this batch: the same prompts and seed give the same responses."""

    def __len__(self) -> int:
        return len(self.contexts)


@dataclass(frozen=True)
class Rollouts:
    """Sampled responses to a :class:`PromptBatch`, with the sampler's log-probabilities."""

    prompts: PromptBatch
    response_ids: Tensor
    """(B, T_r) sampled tokens (without the decoder start token), ``<pad>`` after the row's end."""
    response_mask: Tensor
    """(B, T_r) 1 for response tokens up to and including the first ``</s>``."""
    logprobs: Tensor
    """(B, T_r) log π(token) from the sampler's raw logits (no temperature or top-k), 0 under the mask."""
    responses: tuple[str, ...]
    """Decoded response text (special tokens removed)."""
    version: int
    """Policy version that generated these responses."""
    values: Tensor | None = None
    """(B, T_r) the value head's estimate before each response token, from the sampler's decoder
    states (0 under the mask), or ``None`` when the sampler had no value head."""

    def __len__(self) -> int:
        return len(self.responses)

    @staticmethod
    def concat(parts: Sequence[Rollouts]) -> Rollouts:
        """Rows of ``parts`` in order, tensors re-padded to the longest; all parts share a version."""
        if not parts:
            raise ValueError("Rollouts.concat needs at least one part")
        versions = {p.version for p in parts}
        if len(versions) != 1:
            raise ValueError(f"Rollouts.concat: parts come from different policy versions {sorted(versions)}")
        prompts = PromptBatch(
            index=np.concatenate([p.prompts.index for p in parts]),
            contexts=tuple(c for p in parts for c in p.prompts.contexts),
            gold_levels={
                m: np.concatenate([p.prompts.gold_levels[m] for p in parts])
                for m in parts[0].prompts.gold_levels
            },
            prompt_ids=pad_stack([p.prompts.prompt_ids for p in parts], value=_pad_of(parts[0])),
            prompt_mask=pad_stack([p.prompts.prompt_mask for p in parts], value=0),
            seed=parts[0].prompts.seed,
        )
        return Rollouts(
            prompts=prompts,
            response_ids=pad_stack([p.response_ids for p in parts], value=_pad_of(parts[0])),
            response_mask=pad_stack([p.response_mask for p in parts], value=0),
            logprobs=pad_stack([p.logprobs for p in parts], value=0.0),
            responses=tuple(r for p in parts for r in p.responses),
            version=parts[0].version,
            values=(
                pad_stack([p.values for p in parts if p.values is not None], value=0.0)
                if all(p.values is not None for p in parts)
                else None
            ),
        )


def _pad_of(part: Rollouts) -> int:
    # the value under a mask is irrelevant; use what the part itself pads with (T5: <pad> = 0)
    masked = part.response_ids[part.response_mask == 0]
    return int(masked[0]) if masked.numel() else 0


@dataclass(frozen=True)
class RewardScores:
    """Identifier verdicts on ``B`` responses against their gold levels, and the resulting scores."""

    scores: Tensor
    """(B,) empathy score of each response (e.g. ``exp(−Σ w_m CE_m)``), before normalisation."""
    gold_prob: dict[str, Tensor]
    """Mechanism -> (B,) probability the identifier gives the gold level."""
    hit: dict[str, Tensor]
    """Mechanism -> (B,) 1.0 where the identifier's argmax level equals the gold level."""
    levels: dict[str, Tensor]
    """Mechanism -> (B,) identifier-predicted level of the response."""

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def concat(parts: Sequence[RewardScores]) -> RewardScores:
        """Rows of ``parts`` in order."""
        if not parts:
            raise ValueError("RewardScores.concat needs at least one part")

        def cat(name: str) -> dict[str, Tensor]:
            keys = getattr(parts[0], name)
            return {m: torch.cat([getattr(p, name)[m] for p in parts]) for m in keys}

        return RewardScores(
            scores=torch.cat([p.scores for p in parts]),
            gold_prob=cat("gold_prob"),
            hit=cat("hit"),
            levels=cat("levels"),
        )


@dataclass(frozen=True)
class TrainBatch:
    """What the learner trains on: responses with their old log-probs, values, advantages and returns."""

    prompt_ids: Tensor
    """(B, T_p)."""
    prompt_mask: Tensor
    """(B, T_p)."""
    response_ids: Tensor
    """(B, T_r)."""
    response_mask: Tensor
    """(B, T_r)."""
    old_logprobs: Tensor
    """(B, T_r) log π_old of each response token, from the learner before the update."""
    old_values: Tensor
    """(B, T_r) value estimates before the update."""
    advantages: Tensor
    """(B, T_r) whitened GAE advantages, 0 under the mask."""
    returns: Tensor
    """(B, T_r) GAE returns (value targets), 0 under the mask."""
    version: int
    """Policy version of the rollouts."""

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])

    def _tensors(self) -> dict[str, Tensor]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)
        }

    def to(self, device: torch.device | str) -> TrainBatch:
        """The same batch with every tensor on ``device``."""
        return moved_to(self, device)

    def select(self, rows: Sequence[int] | IntArray) -> TrainBatch:
        """The rows ``rows`` (in that order), with all-padding trailing columns dropped."""
        index = torch.tensor(np.asarray(rows, dtype=np.int64))
        picked: dict[str, Any] = {k: t[index] for k, t in self._tensors().items()}
        picked["prompt_ids"], picked["prompt_mask"] = trim_columns(
            picked["prompt_ids"], picked["prompt_mask"], mask=picked["prompt_mask"]
        )
        response_keys = (
            "response_ids",
            "response_mask",
            "old_logprobs",
            "old_values",
            "advantages",
            "returns",
        )
        trimmed = trim_columns(*(picked[k] for k in response_keys), mask=picked["response_mask"])
        picked.update(zip(response_keys, trimmed, strict=True))
        return replace(self, **picked)


def split_evenly(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` in ``parts`` contiguous runs whose sizes differ by at most one (earlier runs larger)."""
    if parts < 1:
        raise ValueError(f"split_evenly: parts must be >= 1; got {parts}")
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(list(items[start:stop]))
        start = stop
    return out
