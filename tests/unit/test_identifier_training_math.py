"""Identifier training pieces: class weights, data-parallel batching, and a tiny identifier learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import IdentifiersConfig
from pipeline.models import build_identifier, train_tokenizer
from pipeline.training.identifiers import (
    LabeledPairs,
    batch_loss,
    class_weights,
    epoch_batches,
    evaluate,
    steps_per_epoch,
)
from pipeline.training.sft import warmup_linear


def test_class_weights_hand_computed() -> None:
    labels = [0] * 6 + [1] * 3 + [2] * 1  # counts 6, 3, 1
    inv = class_weights(labels, "inverse")
    # w ∝ 1/n, normalised so Σ n_c w_c = N: w = k/n with 3k = 10
    assert inv.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    sqrt = class_weights(labels, "inverse_sqrt")
    raw = np.array([6, 3, 1]) ** -0.5
    assert sqrt.tolist() == pytest.approx((raw * 10 / (raw * [6, 3, 1]).sum()).tolist())
    assert class_weights(labels, "none").tolist() == [1.0, 1.0, 1.0]
    # weighted mean weight over examples is 1 whatever the mode
    for mode in ("inverse", "inverse_sqrt"):
        w = class_weights(labels, mode)  # type: ignore[arg-type]
        assert float(sum(w[label] for label in labels)) / len(labels) == pytest.approx(1.0)


def test_class_weights_with_an_absent_class() -> None:
    w = class_weights([0, 0, 1], "inverse")
    assert w[2] == pytest.approx(max(w[0], w[1]))


@pytest.mark.parametrize(("n", "batch", "world"), [(10, 4, 1), (10, 4, 2), (23, 8, 4), (7, 8, 2), (9, 4, 4)])
def test_rank_shards_partition_each_global_batch(n: int, batch: int, world: int) -> None:
    per_rank = [epoch_batches(n, batch, seed=3, epoch=1, rank=r, world_size=world) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1, "every rank takes the same number of steps"
    assert len(per_rank[0]) == steps_per_epoch(n, batch, world)
    seen = [i for r in range(world) for step in per_rank[r] for i in step]
    assert len(seen) == len(set(seen)), "no example twice in an epoch"
    single = epoch_batches(n, batch, seed=3, epoch=1)
    for step, global_batch in enumerate(single[: len(per_rank[0])]):
        assert sorted(i for r in range(world) for i in per_rank[r][step]) == sorted(global_batch)
    assert all(len(step) >= 1 for b in per_rank for step in b)


def test_batches_depend_only_on_seed_and_epoch() -> None:
    a = epoch_batches(50, 8, seed=1, epoch=2)
    assert a == epoch_batches(50, 8, seed=1, epoch=2)
    assert a != epoch_batches(50, 8, seed=1, epoch=3)
    assert sorted(i for step in a for i in step) == list(range(50))


def test_identifier_schedule_without_warmup_is_linear_decay() -> None:
    f = warmup_linear(4)  # identifiers.optimizer.warmup_ratio=0 (the default)
    assert [f(s) for s in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


def test_labeled_pairs_validate() -> None:
    with pytest.raises(ValueError, match="same length"):
        LabeledPairs(("a",), ("b", "c"), (0,))
    with pytest.raises(ValueError, match=r"levels must be in \[0, 3\), got \[3\]"):
        LabeledPairs(("a",), ("b",), (3,))


def test_tiny_identifier_learns_a_separable_toy_task() -> None:
    """Level = how strongly the response expresses sympathy; learnable from the response alone."""
    rng = np.random.default_rng(0)
    posts = ["my dog died today", "i failed my exam", "work is so stressful", "i feel alone lately"]
    replies = {
        0: ["the weather is nice", "have you tried turning it off", "cars are fast", "i like pizza"],
        1: ["that is rough", "oh no", "that sounds bad", "too bad"],
        2: [
            "i am so sorry you are hurting",
            "my heart goes out to you",
            "i feel so sad for you",
            "sending you love",
        ],
    }
    rows = [(str(rng.choice(posts)), str(rng.choice(replies[level])), level) for level in [0, 1, 2] * 40]
    pairs = LabeledPairs(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))
    tok = train_tokenizer([*posts, *(t for v in replies.values() for t in v)] * 5, 400)
    cfg = IdentifiersConfig(d_model=32, d_ff=64, num_layers=1, num_heads=2, dropout=0.0)
    torch.manual_seed(0)
    model = build_identifier(cfg, tok)
    lengths = {"max_context_len": 16, "max_response_len": 16}
    before = evaluate(model, tok, pairs, **lengths)["accuracy"]
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    weights = class_weights(pairs.labels, "none")
    for epoch in range(15):
        for indices in epoch_batches(len(pairs), 16, seed=0, epoch=epoch):
            loss = batch_loss(model, tok, pairs, indices, weights, **lengths)
            optim.zero_grad()
            loss.backward()
            optim.step()
    after = evaluate(model, tok, pairs, **lengths)
    assert after["accuracy"] >= 0.95, (before, after)
    assert after["macro_f1"] >= 0.95
