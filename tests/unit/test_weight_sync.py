"""The weight-sync group without Ray: two members (threads) broadcasting a policy over gloo in buckets."""

from __future__ import annotations

import threading

import pytest
import torch

from actors.ppo.weight_sync import WeightGroup, buckets, checksum, host_store, layout, sync_tensors
from pipeline.config import ModelConfig
from pipeline.models import build_policy, train_tokenizer

pytestmark = pytest.mark.unit

SHAPE = ModelConfig(
    vocab_size=400, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=2
)


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
    sender = build_policy(SHAPE, tokenizer)
    torch.manual_seed(1)
    receiver = build_policy(SHAPE, tokenizer)
    assert layout(sender) == layout(receiver)
    assert checksum(sender) != checksum(receiver)
    live = [t.data_ptr() for t in sync_tensors(receiver)]

    store, port = host_store("127.0.0.1", 2, timeout_s=60)
    groups: dict[int, WeightGroup] = {}
    sent: dict[int, int] = {}
    errors: list[BaseException] = []

    def member(rank: int) -> None:
        try:
            groups[rank] = WeightGroup.join(
                host="127.0.0.1", port=port, rank=rank, world_size=2, backend="gloo", own_host="127.0.0.1",
                store=store if rank == 0 else None, timeout_s=60,
            )  # fmt: skip
            model = sender if rank == 0 else receiver
            # a bucket of 16 KiB: the tiny policy (~50k parameters) needs several
            sent[rank] = groups[rank].broadcast(sync_tensors(model), bucket_bytes=16 * 1024)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=member, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    total = sum(t.numel() * t.element_size() for t in sync_tensors(sender))
    assert sent == {0: total, 1: total}
    assert total > 3 * 16 * 1024  # more than a few buckets went over the wire
    assert checksum(receiver) == checksum(sender)
    # received in place: the receiver's parameters are the same tensors as before
    assert [t.data_ptr() for t in sync_tensors(receiver)] == live
    for g in groups.values():
        g.close()
