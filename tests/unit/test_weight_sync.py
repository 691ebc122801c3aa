"""The weight-sync group without Ray: two members (threads) broadcasting a policy over gloo in buckets."""

from __future__ import annotations

import pytest
import torch
from tiny import POLICY, broadcast_in_threads

from actors.ppo.weight_sync import buckets, checksum, layout, sync_tensors
from pipeline.models import build_policy, train_tokenizer

pytestmark = pytest.mark.unit


def test_buckets_are_bounded_single_dtype_runs_in_order() -> None:
    tensors = [
        torch.zeros(10),
        torch.zeros(10),
        torch.zeros(30),
        torch.zeros(4, dtype=torch.bfloat16),
        torch.zeros(5),
    ]
    out = list(buckets(tensors, bucket_bytes=80))
    # 40 + 40 bytes fill a bucket; the 120-byte tensor travels alone; a dtype change starts a bucket
    assert [[t.numel() for t in b] for b in out] == [[10, 10], [30], [4], [5]]
    assert [t for b in out for t in b] == tensors
    assert all(len({t.dtype for t in b}) == 1 for b in out)


def test_rank_zero_broadcasts_its_weights_into_the_other_members_parameters() -> None:
    tokenizer = train_tokenizer(["a tiny corpus for a tiny tokenizer", "hello there"] * 5, 400)
    torch.manual_seed(0)
    sender = build_policy(POLICY, tokenizer)
    torch.manual_seed(1)
    receiver = build_policy(POLICY, tokenizer)
    assert layout(sender) == layout(receiver)
    assert checksum(sender) != checksum(receiver)
    live = [t.data_ptr() for t in sync_tensors(receiver)]
    # a bucket of 16 KiB: the tiny policy (~50k parameters) needs several
    sent = broadcast_in_threads(sender, receiver, bucket_bytes=16 * 1024)
    total = sum(t.numel() * t.element_size() for t in sync_tensors(sender))
    assert sent == {0: total, 1: total}
    assert total > 3 * 16 * 1024  # more than a few buckets went over the wire
    assert checksum(receiver) == checksum(sender)
    # received in place: the receiver's parameters are the same tensors as before
    assert [t.data_ptr() for t in sync_tensors(receiver)] == live
