"""Turning (context, response) text pairs into identifier inputs, the same way at training and scoring time.

Truncation rule (documented, and shared by training, labelling, rewards and evaluation): a
context keeps its **last** ``max_context_len`` tokens (the most recent dialogue turns matter
most), a response keeps its **first** ``max_response_len`` tokens; both end with the tokenizer's
end-of-sequence token when it has one. An empty or whitespace-only response encodes as that
end-of-sequence token alone (or the pad token), so it gets a defined prediction instead of a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import PreTrainedTokenizerBase


class PairBatch(NamedTuple):
    """Padded identifier inputs for ``B`` pairs."""

    context_ids: torch.Tensor
    """(B, T_c) context token ids."""
    context_mask: torch.Tensor
    """(B, T_c) 1 for tokens, 0 for padding."""
    response_ids: torch.Tensor
    """(B, T_r) response token ids."""
    response_mask: torch.Tensor
    """(B, T_r) 1 for tokens, 0 for padding."""

    def to(self, device: torch.device | str) -> PairBatch:
        """The same batch on ``device``."""
        return PairBatch(*(t.to(device) for t in self))


def _ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    encoded = tokenizer([t if t.strip() else "" for t in texts], add_special_tokens=True)
    return [list(ids) for ids in encoded["input_ids"]]


def _fallback_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the identifier tokenizer has no eos, sep or pad token to encode an empty text")


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    responses: Sequence[str],
    *,
    max_context_len: int,
    max_response_len: int,
) -> PairBatch:
    """Tokenize, truncate (see module docstring) and right-pad ``B`` pairs.

    Raises:
        ValueError: different numbers of contexts and responses, or an empty batch.
    """
    if len(contexts) != len(responses):
        raise ValueError(f"got {len(contexts)} contexts but {len(responses)} responses; they must pair up")
    if not contexts:
        raise ValueError("encode_pairs needs at least one pair")
    closing = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    lead = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    fallback = _fallback_id(tokenizer)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else fallback)

    def clean(ids: list[int], limit: int, keep: str) -> list[int]:
        if not ids:
            return [fallback]
        if len(ids) <= limit:
            return ids
        if keep == "end":  # keep a leading special token such as BERT's [CLS]
            head = ids[:1] if lead is not None and ids[0] == lead else []
            return head + ids[len(ids) - (limit - len(head)) :]
        tail = [ids[-1]] if closing is not None and ids[-1] == closing else []
        return ids[: limit - len(tail)] + tail

    ctx = [clean(ids, max_context_len, "end") for ids in _ids(tokenizer, contexts)]
    rsp = [clean(ids, max_response_len, "start") for ids in _ids(tokenizer, responses)]
    context_ids, context_mask = _pad(ctx, pad_id)
    response_ids, response_mask = _pad(rsp, pad_id)
    return PairBatch(context_ids, context_mask, response_ids, response_mask)
