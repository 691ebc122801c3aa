"""Pieces of identifier training that need no cluster: per-mechanism examples, class weights,
deterministic data-parallel batching, the loss, and evaluation into a metrics report.

The Ray Train worker loop (``actors/training/identifiers.py``) composes these; a single process
can too. Seeding is per (seed, epoch), so a run resumed at an epoch boundary replays exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from pipeline.encoding import encode_pairs
from pipeline.evaluation.classification import classification_report
from pipeline.models import NUM_LEVELS, EmpathyIdentifier


@dataclass(frozen=True)
class LabeledPairs:
    """(context, response, level) triples of one mechanism."""

    contexts: tuple[str, ...]
    responses: tuple[str, ...]
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.contexts) == len(self.responses) == len(self.labels):
            raise ValueError(
                f"{len(self.contexts)} contexts, {len(self.responses)} responses and {len(self.labels)} labels "
                "must have the same length"
            )
        bad = sorted({label for label in self.labels if not 0 <= label < NUM_LEVELS})
        if bad:
            raise ValueError(f"levels must be in [0, {NUM_LEVELS}), got {bad}")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence[Any]], mechanism: str) -> LabeledPairs:
        """From EPITOME columns ``seeker_post``, ``response_post`` and ``<mechanism>_level``."""
        return cls(
            tuple(str(t) for t in columns["seeker_post"]),
            tuple(str(t) for t in columns["response_post"]),
            tuple(int(v) for v in columns[f"{mechanism.lower()}_level"]),
        )


def class_weights(
    labels: Sequence[int], mode: Literal["none", "inverse_sqrt", "inverse"], num_classes: int = NUM_LEVELS
) -> torch.Tensor:
    """(C,) cross-entropy class weights, normalised so the weighted mean over examples is 1.

    ``inverse``: w_c ∝ 1/n_c; ``inverse_sqrt``: w_c ∝ 1/√n_c; ``none``: all 1. A class absent
    from ``labels`` gets the largest present weight (it cannot contribute to the loss anyway).
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    if mode == "none":
        return torch.ones(num_classes)
    power = 1.0 if mode == "inverse" else 0.5
    present = counts > 0
    raw = np.zeros(num_classes)
    raw[present] = counts[present] ** -power
    raw[~present] = raw[present].max() if present.any() else 1.0
    raw *= counts.sum() / max((raw * counts).sum(), 1e-12)
    return torch.tensor(raw, dtype=torch.float32)


def epoch_batches(
    num_examples: int, global_batch: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's example indices for every step of ``epoch``.

    The permutation depends only on (seed, epoch); each global batch of ``global_batch`` indices
    is split into ``world_size`` equal shards (rank r takes shard r). A final global batch too
    small to give every rank an example is dropped, so all ranks take the same number of steps.
    """
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} must be divisible by world size {world_size}")
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    batches = []
    for start in range(0, num_examples, global_batch):
        chunk = order[start : start + global_batch]
        if len(chunk) < world_size:
            break
        batches.append([int(i) for i in np.array_split(chunk, world_size)[rank]])
    return batches


def steps_per_epoch(num_examples: int, global_batch: int, world_size: int = 1) -> int:
    """Number of optimiser steps :func:`epoch_batches` yields per epoch."""
    full, rest = divmod(num_examples, global_batch)
    return full + (1 if rest >= world_size else 0)


def batch_loss(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: LabeledPairs,
    indices: Sequence[int],
    weights: torch.Tensor,
    *,
    max_context_len: int,
    max_response_len: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Class-weighted cross-entropy of ``model`` (an identifier, possibly DDP-wrapped) on ``indices``."""
    batch = encode_pairs(
        tokenizer,
        [pairs.contexts[i] for i in indices],
        [pairs.responses[i] for i in indices],
        max_context_len=max_context_len,
        max_response_len=max_response_len,
    ).to(device)
    logits = model(*batch)  # (B, C)
    labels = torch.tensor([pairs.labels[i] for i in indices], device=logits.device)
    return nn.functional.cross_entropy(logits.float(), labels, weight=weights.to(logits.device))


@torch.inference_mode()
def predict(
    model: EmpathyIdentifier,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    responses: Sequence[str],
    *,
    max_context_len: int,
    max_response_len: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """(N, C) level probabilities, in eval mode, batched by ``batch_size``."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(contexts), batch_size):
        batch = encode_pairs(
            tokenizer,
            contexts[start : start + batch_size],
            responses[start : start + batch_size],
            max_context_len=max_context_len,
            max_response_len=max_response_len,
        ).to(device)
        out.append(torch.softmax(model(*batch).float(), dim=-1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, NUM_LEVELS), dtype=np.float32)


def evaluate(
    model: EmpathyIdentifier,
    tokenizer: PreTrainedTokenizerBase,
    pairs: LabeledPairs,
    *,
    max_context_len: int,
    max_response_len: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """:func:`pipeline.evaluation.classification.classification_report` of the model's argmax levels on ``pairs``."""
    probs = predict(
        model,
        tokenizer,
        pairs.contexts,
        pairs.responses,
        max_context_len=max_context_len,
        max_response_len=max_response_len,
        batch_size=batch_size,
        device=device,
    )
    return classification_report(list(pairs.labels), probs.argmax(axis=-1).tolist(), NUM_LEVELS)


def seed_everything(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch (dropout) for one (epoch, rank) so an epoch replays identically after a restart."""
    torch.manual_seed(int(seed * 1_000_003 + epoch * 1_009 + rank) % (2**63 - 1))


def is_better(candidate: float, best: float | None, *, min_delta: float = 1e-9) -> bool:
    """Whether a dev score improves on the best so far (NaN never does)."""
    return not math.isnan(candidate) and (best is None or candidate > best + min_delta)
