"""Pieces of supervised fine-tuning (MLE, context → listener response) that need no cluster.

Tokenisation with the SFT truncation rule, length-grouped data-parallel batching, dynamic padding
with ``-100`` label masking, the token-level NLL, perplexity and the learning-rate schedule. The
Ray Train worker loop (``actors/training/sft_worker.py``) composes them; every choice depends only on
(seed, epoch), so a run resumed from a checkpoint replays exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

IGNORE_INDEX = -100
"""Label of positions that do not count in the loss (padding), as in ``nn.CrossEntropyLoss``."""


def truncate_source(ids: Sequence[int], limit: int) -> list[int]:
    """Keep the **last** ``limit`` tokens of an encoded dialogue history (the most recent turns).

    The closing end-of-sequence token, being last, survives.
    """
    if limit < 1:
        raise ValueError(f"source limit must be >= 1, got {limit}")
    return list(ids[-limit:])


def truncate_target(ids: Sequence[int], limit: int, eos_id: int) -> list[int]:
    """Keep the **first** ``limit`` tokens of an encoded response, still ending with ``eos_id``.

    A response that does not fit keeps its first ``limit - 1`` tokens followed by ``eos_id``
    (what Hugging Face tokenizers do with ``truncation=True``).
    """
    if limit < 1:
        raise ValueError(f"target limit must be >= 1, got {limit}")
    if len(ids) <= limit:
        return list(ids)
    return [*ids[: limit - 1], eos_id]


@dataclass(frozen=True)
class Seq2SeqExamples:
    """Tokenised (source, target) pairs, stored ragged: flat id arrays plus offsets.

    Compact to pickle (it is shipped to every training worker) and cheap to index.
    """

    source_flat: np.ndarray
    """(Σ S_i,) int32 source ids of every example, concatenated."""
    source_offsets: np.ndarray
    """(N + 1,) int64 start of example i's source in ``source_flat``; the last entry is the total."""
    target_flat: np.ndarray
    """(Σ T_i,) int32 target ids, concatenated."""
    target_offsets: np.ndarray
    """(N + 1,) int64 offsets into ``target_flat``."""

    def __post_init__(self) -> None:
        for name, flat, offsets in (
            ("source", self.source_flat, self.source_offsets),
            ("target", self.target_flat, self.target_offsets),
        ):
            if (
                offsets.ndim != 1
                or offsets[0] != 0
                or offsets[-1] != len(flat)
                or np.any(np.diff(offsets) < 1)
            ):
                raise ValueError(
                    f"{name} offsets must start at 0, end at {len(flat)} and give non-empty rows"
                )
        if len(self.source_offsets) != len(self.target_offsets):
            raise ValueError(
                f"{len(self.source_offsets) - 1} sources but {len(self.target_offsets) - 1} targets"
            )

    @classmethod
    def from_lists(
        cls, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
    ) -> Seq2SeqExamples:
        """From per-example id lists (each non-empty)."""

        def pack(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([len(r) for r in rows])
            flat = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
            return flat, offsets

        return cls(*pack(sources), *pack(targets))

    def __len__(self) -> int:
        return len(self.source_offsets) - 1

    def source(self, i: int) -> np.ndarray:
        """Source ids of example ``i``."""
        return self.source_flat[self.source_offsets[i] : self.source_offsets[i + 1]]

    def target(self, i: int) -> np.ndarray:
        """Target ids of example ``i`` (ending with end-of-sequence)."""
        return self.target_flat[self.target_offsets[i] : self.target_offsets[i + 1]]

    @property
    def source_lengths(self) -> np.ndarray:
        """(N,) source length of every example."""
        return np.diff(self.source_offsets)

    @property
    def target_lengths(self) -> np.ndarray:
        """(N,) target length of every example."""
        return np.diff(self.target_offsets)

    def subset(self, indices: Sequence[int]) -> Seq2SeqExamples:
        """The examples at ``indices``, in that order."""
        return Seq2SeqExamples.from_lists(
            [self.source(i).tolist() for i in indices], [self.target(i).tolist() for i in indices]
        )


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    responses: Sequence[str],
    *,
    max_source_len: int,
    max_target_len: int,
    chunk: int = 4096,
) -> Seq2SeqExamples:
    """Tokenise (context, response) pairs with the SFT truncation rule.

    Sources keep their last ``max_source_len`` tokens (:func:`truncate_source`), targets their first
    ``max_target_len`` (:func:`truncate_target`); both end with the tokenizer's ``</s>``. An empty
    text encodes as ``</s>`` alone.

    Raises:
        ValueError: different numbers of contexts and responses, or a tokenizer without ``</s>``.
    """
    if len(contexts) != len(responses):
        raise ValueError(f"got {len(contexts)} contexts but {len(responses)} responses; they must pair up")
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int):
        raise ValueError(
            "the policy tokenizer has no eos token. Fix: use a T5 tokenizer or train_tokenizer's."
        )

    def ids(texts: Sequence[str]) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(texts), chunk):
            encoded = tokenizer(list(texts[start : start + chunk]), add_special_tokens=True)["input_ids"]
            out += [list(row) if len(row) else [eos] for row in encoded]
        # a tokenizer that adds no </s> (unusual for T5) still gets one, so every target ends
        return [row if row[-1] == eos else [*row, eos] for row in out]

    sources = [truncate_source(row, max_source_len) for row in ids(contexts)]
    targets = [truncate_target(row, max_target_len, eos) for row in ids(responses)]
    return Seq2SeqExamples.from_lists(sources, targets)


class Seq2SeqBatch(NamedTuple):
    """A right-padded teacher-forcing batch for a T5 policy."""

    input_ids: torch.Tensor
    """(B, T_s) source ids, padded with the pad id."""
    attention_mask: torch.Tensor
    """(B, T_s) 1 for source tokens, 0 for padding."""
    decoder_input_ids: torch.Tensor
    """(B, T_t) the targets shifted right, starting with the decoder start id."""
    labels: torch.Tensor
    """(B, T_t) target ids, :data:`IGNORE_INDEX` at padding (and everywhere for a masked batch)."""

    def to(self, device: torch.device | str) -> Seq2SeqBatch:
        """The same batch on ``device``."""
        return Seq2SeqBatch(*(t.to(device) for t in self))

    @property
    def source_tokens(self) -> int:
        """Non-padding source tokens."""
        return int(self.attention_mask.sum())

    @property
    def target_tokens(self) -> int:
        """Target tokens that count in the loss."""
        return int((self.labels != IGNORE_INDEX).sum())


def shift_right(labels: torch.Tensor, *, decoder_start_id: int, pad_id: int) -> torch.Tensor:
    """(B, T) labels → (B, T) decoder inputs: ``decoder_start_id`` then labels[:, :-1], ``-100`` → pad."""
    shifted = torch.full_like(labels, pad_id)
    shifted[:, 0] = decoder_start_id
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_id)


def _pad(rows: Sequence[np.ndarray], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.from_numpy(row.astype(np.int64))
    return out


def collate(
    examples: Seq2SeqExamples,
    indices: Sequence[int],
    *,
    pad_id: int,
    decoder_start_id: int,
    masked: bool = False,
) -> Seq2SeqBatch:
    """Pad the examples at ``indices`` to the longest source and target of the batch (dynamic padding).

    ``masked`` sets every label to :data:`IGNORE_INDEX`: a placeholder batch for a rank with no
    examples at a step, which must still run the forward pass with the others.
    """
    if not indices:
        raise ValueError("collate needs at least one index")
    input_ids = _pad([examples.source(i) for i in indices], pad_id)
    lengths = torch.tensor([len(examples.source(i)) for i in indices])
    attention_mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
    labels = _pad([examples.target(i) for i in indices], IGNORE_INDEX)
    if masked:
        labels.fill_(IGNORE_INDEX)
    decoder_input_ids = shift_right(
        _pad([examples.target(i) for i in indices], pad_id), decoder_start_id=decoder_start_id, pad_id=pad_id
    )
    return Seq2SeqBatch(input_ids, attention_mask, decoder_input_ids, labels)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the labelled tokens and their count.

    Args:
        logits: (B, T, V) next-token logits (any float dtype; computed in float32).
        labels: (B, T) target ids, :data:`IGNORE_INDEX` where a position does not count.

    Returns:
        ``(nll_sum, tokens)``: scalar tensors, ``Σ_t −log p(y_t | y_<t, x)`` over labelled
        positions (differentiable) and the number of those positions.
    """
    nll = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return nll, (labels != IGNORE_INDEX).sum()


def data_parallel_loss(nll_sum: torch.Tensor, *, global_tokens: float, world_size: int) -> torch.Tensor:
    """One rank's loss such that gradients averaged over ranks equal those of the global token mean.

    ``nll_sum`` is this rank's summed NLL (:func:`token_nll`), ``global_tokens`` the labelled tokens
    of the whole global batch (all ranks). DDP and DeepSpeed average gradients over ranks, so
    ``mean_r ∇(world · NLL_r / N) = ∇(Σ_r NLL_r / N)``: sharding does not change the update, even
    when shards hold different numbers of tokens (or none).
    """
    return nll_sum * world_size / max(global_tokens, 1.0)


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(Σ NLL / N): token-level perplexity; ``nan`` with no tokens, ``inf`` past float range."""
    if tokens <= 0:
        return math.nan
    mean = nll_sum / tokens
    return math.exp(mean) if mean < 700 else math.inf


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """Optimiser steps per epoch of :func:`length_grouped_batches` (the last batch may be short)."""
    return -(-num_examples // global_batch)


def length_grouped_batches(
    source_lengths: Sequence[int] | np.ndarray,
    target_lengths: Sequence[int] | np.ndarray,
    global_batch: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    group_batches: int = 50,
) -> list[list[int]]:
    """This rank's example indices for every step of ``epoch``, grouped by length.

    A permutation seeded by (seed, epoch) is cut into mega-batches of ``group_batches`` global
    batches; each mega-batch is sorted by (source length, target length), longest first, and cut
    into global batches of ``global_batch``, so examples of similar length share a batch and
    dynamic padding wastes little. The order of the global batches is then shuffled (same seed).
    Rank ``r`` takes positions ``r, r + world_size, ...`` of each global batch, so shards differ
    by at most one example and have similar lengths.

    Every example appears exactly once per epoch on exactly one rank, and every rank gets
    :func:`steps_per_epoch` steps. Only the last global batch can be short; a rank whose shard
    of it is empty gets an empty list (it runs a masked placeholder batch).
    """
    n = len(source_lengths)
    if len(target_lengths) != n:
        raise ValueError(f"{n} source lengths but {len(target_lengths)} target lengths")
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} must be divisible by world size {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    src = np.asarray(source_lengths, dtype=np.int64)
    tgt = np.asarray(target_lengths, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    mega = global_batch * max(group_batches, 1)
    batches: list[np.ndarray] = []
    for start in range(0, n, mega):
        chunk = order[start : start + mega]
        # lexsort: last key is primary; the permuted position breaks ties, so the order is seeded
        chunk = chunk[np.lexsort((np.arange(len(chunk)), -tgt[chunk], -src[chunk]))]
        batches += [chunk[i : i + global_batch] for i in range(0, len(chunk), global_batch)]
    # a short batch stays last: it keeps equal-size batches (and their shards) everywhere else
    full = [b for b in batches if len(b) == global_batch]
    short = [b for b in batches if len(b) < global_batch]
    shuffled = [full[i] for i in rng.permutation(len(full))] + short
    return [[int(i) for i in b[rank::world_size]] for b in shuffled]


def eval_batches(
    source_lengths: Sequence[int] | np.ndarray, batch_size: int, *, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's indices for a full pass over an evaluation set, sorted by length.

    Every index appears once over all ranks; every rank gets the same number of batches (some
    possibly empty at the end), since ZeRO-3 needs every rank in every forward pass.
    """
    order = np.argsort(-np.asarray(source_lengths, dtype=np.int64), kind="stable")
    span = batch_size * world_size
    return [[int(i) for i in order[s : s + span][rank::world_size]] for s in range(0, len(order), span)]


def warmup_linear(total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up from 0 over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    total = max(total_steps, 1)
    warm = max(min(warmup_steps, total - 1), 0)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return max(0.0, (total - step) / max(total - warm, 1))

    return factor


@torch.no_grad()
def gold_nll(
    model: T5ForConditionalGeneration,
    examples: Seq2SeqExamples,
    *,
    pad_id: int,
    decoder_start_id: int,
    batch_size: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per-example teacher-forced NLL sums ``(N,)`` and token counts ``(N,)`` of ``examples``' targets.

    Batches are length-sorted (:func:`eval_batches`); each row's sum is
    :func:`token_nll` of that row, so ``perplexity(sums.sum(), tokens.sum())`` is the
    SFT validation perplexity of the same examples. The model must be in eval mode.
    """
    device = next(model.parameters()).device
    nll = np.zeros(len(examples), dtype=np.float64)
    tokens = np.zeros(len(examples), dtype=np.int64)
    for indices in eval_batches(examples.source_lengths, batch_size):
        batch = collate(examples, indices, pad_id=pad_id, decoder_start_id=decoder_start_id).to(device)
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            decoder_input_ids=batch.decoder_input_ids,
            use_cache=False,
        ).logits
        for row, i in enumerate(indices):
            s, t = token_nll(logits[row : row + 1], batch.labels[row : row + 1])
            nll[i], tokens[i] = float(s), int(t)
    return nll, tokens
