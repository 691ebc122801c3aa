"""SFT pieces: truncation, length-grouped data-parallel batching, label masking, NLL and perplexity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.models import build_policy, train_tokenizer
from pipeline.training.sft import (
    IGNORE_INDEX,
    Seq2SeqExamples,
    collate,
    data_parallel_loss,
    encode_examples,
    eval_batches,
    length_grouped_batches,
    perplexity,
    shift_right,
    steps_per_epoch,
    token_nll,
    truncate_source,
    truncate_target,
    warmup_linear,
)

TEXTS = [
    "I lost my job today and I do not know what to do next.",
    "That must be so hard. Do you have anyone to talk to?",
    "My sister is visiting next week, I am so excited to see her!",
    "That sounds lovely. How long has it been since you saw her?",
    "Someone scratched my car in the parking lot and drove off.",
    "Oh no, that is infuriating. Did anyone see it happen?",
] * 4


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return train_tokenizer(TEXTS, 420)


def test_truncation_keeps_recent_history_and_the_start_of_the_response() -> None:
    eos = 1
    assert truncate_source([5, 6, 7, 8, eos], 3) == [7, 8, eos]
    assert truncate_source([5, eos], 3) == [5, eos]
    assert truncate_target([5, 6, 7, 8, eos], 3, eos) == [5, 6, eos]
    assert truncate_target([5, 6, eos], 3, eos) == [5, 6, eos]
    assert truncate_target([5, eos], 1, eos) == [eos]
    with pytest.raises(ValueError, match="must be >= 1"):
        truncate_source([1], 0)


def test_encode_examples_truncates_with_the_sft_rule(tokenizer) -> None:  # type: ignore[no-untyped-def]
    history = " </s> ".join(TEXTS[:4])
    full_src = tokenizer(history)["input_ids"]
    full_tgt = tokenizer(TEXTS[5])["input_ids"]
    assert len(full_src) > 12 and len(full_tgt) > 6
    ex = encode_examples(
        tokenizer, [history, "hi", "  "], [TEXTS[5], "", "ok"], max_source_len=12, max_target_len=6
    )
    eos = tokenizer.eos_token_id
    assert ex.source(0).tolist() == full_src[-12:], "the most recent history tokens are kept"
    assert ex.source(0)[-1] == eos
    assert ex.target(0).tolist() == [*full_tgt[:5], eos], "the response start is kept, ending with </s>"
    assert ex.target(1).tolist() == [eos], "an empty response is </s> alone"
    assert ex.source(2).tolist() == [eos]
    assert ex.source_lengths.tolist() == [12, len(tokenizer("hi")["input_ids"]), 1]
    with pytest.raises(ValueError, match="pair up"):
        encode_examples(tokenizer, ["a"], [], max_source_len=4, max_target_len=4)


def test_examples_store_round_trips_and_rejects_bad_offsets() -> None:
    ex = Seq2SeqExamples.from_lists([[3, 1], [4, 5, 1]], [[7, 1], [1]])
    assert len(ex) == 2 and ex.source(1).tolist() == [4, 5, 1] and ex.target(1).tolist() == [1]
    assert ex.subset([1, 0]).source(0).tolist() == [4, 5, 1]
    with pytest.raises(ValueError, match="non-empty rows"):
        Seq2SeqExamples.from_lists([[3, 1], []], [[1], [1]])


def test_collate_pads_dynamically_and_masks_labels() -> None:
    ex = Seq2SeqExamples.from_lists([[3, 4, 1], [5, 1], [6, 7, 8, 9, 1]], [[10, 11, 1], [12, 1], [13, 1]])
    batch = collate(ex, [0, 1], pad_id=0, decoder_start_id=0)
    assert batch.input_ids.tolist() == [[3, 4, 1], [5, 1, 0]], "padded to the longest of this batch only"
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch.labels.tolist() == [[10, 11, 1], [12, 1, IGNORE_INDEX]]
    assert batch.decoder_input_ids.tolist() == [[0, 10, 11], [0, 12, 1]]
    assert batch.source_tokens == 5 and batch.target_tokens == 5
    masked = collate(ex, [2], pad_id=0, decoder_start_id=0, masked=True)
    assert masked.target_tokens == 0 and masked.input_ids.shape == (1, 5)
    assert shift_right(torch.tensor([[5, IGNORE_INDEX]]), decoder_start_id=2, pad_id=0).tolist() == [[2, 5]]


def test_token_nll_hand_case_and_reference_loop() -> None:
    # uniform logits over V: every token costs log V
    logits = torch.zeros(2, 3, 4)
    labels = torch.tensor([[1, 2, IGNORE_INDEX], [3, IGNORE_INDEX, IGNORE_INDEX]])
    nll, n = token_nll(logits, labels)
    assert int(n) == 3 and float(nll) == pytest.approx(3 * math.log(4))
    assert perplexity(float(nll), int(n)) == pytest.approx(4.0)
    # slow reference
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    labels = torch.randint(0, 7, (3, 5))
    labels[0, 3:] = IGNORE_INDEX
    labels[2, 1:] = IGNORE_INDEX
    ref, count = 0.0, 0
    for b in range(3):
        for t in range(5):
            if labels[b, t] != IGNORE_INDEX:
                ref -= float(torch.log_softmax(logits[b, t], -1)[labels[b, t]])
                count += 1
    nll, n = token_nll(logits, labels)
    assert int(n) == count and float(nll) == pytest.approx(ref, rel=1e-5)


def test_perplexity_from_summed_nll_is_shard_invariant() -> None:
    shards = [(12.0, 5), (3.5, 2), (0.0, 0)]
    total = perplexity(sum(s for s, _ in shards), sum(n for _, n in shards))
    assert total == pytest.approx(math.exp(15.5 / 7))
    assert math.isnan(perplexity(1.0, 0))
    assert perplexity(1e6, 1) == math.inf


@pytest.mark.parametrize(
    ("n", "batch", "world", "group"),
    [(249, 8, 1, 50), (249, 8, 2, 50), (100, 8, 4, 3), (17, 4, 4, 2), (9, 8, 8, 1), (5, 8, 2, 50)],
)
def test_length_grouped_batches_invariants(n: int, batch: int, world: int, group: int) -> None:
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 200, n), rng.integers(1, 50, n)
    per_rank = [
        length_grouped_batches(
            src, tgt, batch, seed=3, epoch=1, rank=r, world_size=world, group_batches=group
        )
        for r in range(world)
    ]
    steps = steps_per_epoch(n, batch)
    assert all(len(b) == steps for b in per_rank), "every rank takes the same number of steps"
    seen = sorted(i for b in per_rank for step in b for i in step)
    assert seen == list(range(n)), "every example exactly once per epoch"
    for step in range(steps):
        sizes = [len(per_rank[r][step]) for r in range(world)]
        assert max(sizes) - min(sizes) <= 1, "shards of a step are equal up to one example"
        if step < steps - 1:
            assert sum(sizes) == batch, "only the last batch can be short"
    single = length_grouped_batches(src, tgt, batch, seed=3, epoch=1, group_batches=group)
    for step in range(steps):  # sharded == global
        assert sorted(i for r in range(world) for i in per_rank[r][step]) == sorted(single[step])


def test_length_grouped_batches_are_deterministic_and_group_lengths() -> None:
    rng = np.random.default_rng(1)
    src, tgt = rng.integers(1, 200, 400), rng.integers(1, 50, 400)
    a = length_grouped_batches(src, tgt, 8, seed=1, epoch=2)
    assert a == length_grouped_batches(src, tgt, 8, seed=1, epoch=2)
    assert a != length_grouped_batches(src, tgt, 8, seed=1, epoch=3)
    assert a != length_grouped_batches(src, tgt, 8, seed=2, epoch=2)

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * int(src[b].max()) for b in batches if b)

    plain = length_grouped_batches(src, tgt, 8, seed=1, epoch=2, group_batches=1)
    assert padded(a) < 0.7 * padded(plain), "grouping by length cuts source padding"
    # the batch order is shuffled, not longest first
    firsts = [int(src[b].max()) for b in a[:10]]
    assert firsts != sorted(firsts, reverse=True)


def test_length_grouped_batches_reject_indivisible_batches() -> None:
    with pytest.raises(ValueError, match="divisible by world size"):
        length_grouped_batches([1, 2, 3], [1, 1, 1], 3, seed=0, epoch=0, world_size=2)


def test_eval_batches_cover_once_with_equal_counts() -> None:
    lengths = np.arange(25)[::-1] % 7 + 1
    per_rank = [eval_batches(lengths, 4, rank=r, world_size=3) for r in range(3)]
    assert len({len(b) for b in per_rank}) == 1
    assert sorted(i for b in per_rank for batch in b for i in batch) == list(range(25))
    assert any(not batch for b in per_rank for batch in b), "a short last batch leaves a rank empty"


def test_warmup_linear_schedule() -> None:
    f = warmup_linear(10)
    assert [f(s) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    g = warmup_linear(10, 2)
    assert g(0) == pytest.approx(1 / 3) and g(1) == pytest.approx(2 / 3) and g(2) == 1.0 and g(10) == 0.0


def _tiny_policy(tokenizer):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=4, dropout_rate=0.0
    )
    return build_policy(cfg, tokenizer).policy


def test_loss_matches_transformers_and_sharding_keeps_the_gradient(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = _tiny_policy(tokenizer)
    ex = encode_examples(tokenizer, TEXTS[:6:2], TEXTS[1:6:2], max_source_len=16, max_target_len=8)
    start, pad = model.config.decoder_start_token_id, tokenizer.pad_token_id
    batch = collate(ex, [0, 1, 2], pad_id=pad, decoder_start_id=start)
    hf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    logits = model(batch.input_ids, batch.attention_mask, batch.decoder_input_ids).logits
    nll, n = token_nll(logits, batch.labels)
    assert float((nll / n).detach()) == pytest.approx(float(hf.detach()), rel=1e-5), (
        "our shift-right and masking match T5's own"
    )

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()))]

    global_grad = grads(nll / n)
    # two "ranks" with unequal token counts; the engines average their gradients
    shards = [[0], [1, 2]]
    per_rank = []
    for shard in shards:
        b = collate(ex, shard, pad_id=pad, decoder_start_id=start)
        shard_nll, _ = token_nll(model(b.input_ids, b.attention_mask, b.decoder_input_ids).logits, b.labels)
        per_rank.append(grads(data_parallel_loss(shard_nll, global_tokens=float(n), world_size=2)))
    for g, g0, g1 in zip(global_grad, *per_rank, strict=True):
        torch.testing.assert_close((g0 + g1) / 2, g, rtol=1e-4, atol=1e-6)


def test_a_tiny_policy_learns_a_batch(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = _tiny_policy(tokenizer)
    ex = encode_examples(tokenizer, TEXTS[:6:2], TEXTS[1:6:2], max_source_len=16, max_target_len=8)
    batch = collate(
        ex, [0, 1, 2], pad_id=tokenizer.pad_token_id, decoder_start_id=model.config.decoder_start_token_id
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        nll, n = token_nll(
            model(batch.input_ids, batch.attention_mask, batch.decoder_input_ids).logits, batch.labels
        )
        loss = nll / n
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
