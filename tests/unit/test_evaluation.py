"""Evaluation metrics from generated texts, levels and NLLs: hand-computed values, bootstrap consistency,
the labelled-split checks and the per-example gold NLL."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import MECHANISMS, ModelConfig
from pipeline.evaluation.suite import (
    METRICS,
    EvaluationInputError,
    LabeledSplit,
    NgramIndex,
    PolicyOutputs,
    compare,
    evaluate,
    policy_metrics,
    read_labeled_split,
    responses_table,
)
from pipeline.evaluation.text import bleu, distinct_n, rouge_l
from pipeline.models import build_policy, train_tokenizer
from pipeline.training.sft import collate, encode_examples, gold_nll, perplexity, token_nll

pytestmark = pytest.mark.unit

CONTEXTS = ("I lost my job today", "My dog is sick", "I passed the exam!", "It rained all week")
REFS = (
    "Oh no, I am so sorry.",
    "That is awful, is he ok?",
    "Congrats! You must be proud.",
    "That sounds gloomy.",
)
GOLD = {"ER": [0, 0, 1, 2], "IP": [1, 0, 2, 1], "EX": [0, 0, 0, 0]}


def _split() -> LabeledSplit:
    return LabeledSplit("valid", CONTEXTS, REFS, {m: np.array(v, dtype=np.int64) for m, v in GOLD.items()})


def _outputs(
    name: str, responses: tuple[str, ...], pred: dict[str, list[int]], nll: list[float]
) -> PolicyOutputs:
    return PolicyOutputs(
        name=name,
        folder=f"/policies/{name}",
        responses=responses,
        pred_levels={m: np.array(v, dtype=np.int64) for m, v in pred.items()},
        nll_sums=np.array(nll, dtype=np.float64),
        nll_tokens=np.full(len(responses), 2, dtype=np.int64),
    )


HYPS = ("so sorry to hear that", "oh no is he ok", "congrats you must be proud", "so sorry to hear that")
PRED = {"ER": [0, 1, 1, 2], "IP": [1, 0, 2, 1], "EX": [0, 0, 0, 0]}


def test_policy_metrics_hand_computed() -> None:
    out = policy_metrics(_outputs("sft", HYPS, PRED, [1.0, 2.0, 3.0, 4.0]), _split())
    # ER: class 0 P=1 R=1/2 F1=2/3 (support 2), class 1 P=1/2 R=1 F1=2/3, class 2 F1=1 -> weighted 0.75
    assert out["er_f1"] == pytest.approx(75.0)
    assert out["ip_f1"] == pytest.approx(100.0) and out["ex_f1"] == pytest.approx(100.0)
    assert out["emp_f1"] == pytest.approx((75.0 + 100.0 + 100.0) / 3)
    assert out["er_accuracy"] == pytest.approx(75.0)
    assert out["per_mechanism"]["ER"]["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert out["per_mechanism"]["ER"]["pred_distribution"] == pytest.approx([0.25, 0.5, 0.25])
    # NLL 10 over 8 tokens
    assert out["perplexity"] == pytest.approx(math.exp(10 / 8))
    assert out["gold_nll_per_token"] == pytest.approx(10 / 8) and out["gold_tokens"] == 8
    # 20 tokens, 15 distinct ("so sorry to hear that" twice)
    assert out["dist1"] == pytest.approx(15 / 20)
    assert out["dist2"] == pytest.approx(distinct_n(list(HYPS), 2))
    assert out["mean_length"] == pytest.approx(5.0)
    assert out["bleu4"] == pytest.approx(bleu(list(HYPS), list(REFS))["bleu4"])
    assert out["rouge_l"] == pytest.approx(rouge_l(list(HYPS), list(REFS)))
    assert {s.key for s in METRICS} <= set(out)


def test_ngram_index_matches_distinct_n_on_resamples_with_repeats() -> None:
    texts = ["a b c a", "b c d", "", "a", "e f g h e f"]
    for n in (1, 2, 3):
        index = NgramIndex.build(texts, n)
        for idx in ([0, 1, 2, 3, 4], [0, 0, 1], [2, 3], [4, 4, 4, 1], [2]):
            arr = np.array(idx, dtype=np.int64)
            assert index.distinct(arr) == pytest.approx(distinct_n([texts[i] for i in idx], n)), (n, idx)


def test_identical_policies_differ_by_exactly_zero() -> None:
    a = _outputs("sft", HYPS, PRED, [1.0, 2.0, 3.0, 4.0])
    b = _outputs("ppo", HYPS, PRED, [1.0, 2.0, 3.0, 4.0])
    result = compare(a, b, _split(), n_resamples=50, seed=1)
    assert set(result) == {s.key for s in METRICS}
    for key, r in result.items():
        assert (r["difference"], r["ci_low"], r["ci_high"], r["p_value"]) == (0.0, 0.0, 0.0, 1.0), key


def test_bootstrap_observed_values_are_the_table_values() -> None:
    split = _split()
    a = _outputs("sft", HYPS, PRED, [1.0, 2.0, 3.0, 4.0])
    b = _outputs("ppo", REFS, GOLD, [0.5, 0.5, 1.0, 1.0])  # gold text and levels: perfect scores
    table_a, table_b = policy_metrics(a, split), policy_metrics(b, split)
    result = compare(a, b, split, n_resamples=200, seed=0)
    for key, r in result.items():
        assert r["metric_a"] == pytest.approx(table_a[key]), key
        assert r["metric_b"] == pytest.approx(table_b[key]), key
        assert r["difference"] == pytest.approx(table_b[key] - table_a[key]), key
        assert r["ci_low"] <= r["ci_high"] and r["n_resamples"] == 200
    assert table_b["emp_f1"] == pytest.approx(100.0) and table_b["bleu4"] == pytest.approx(100.0)
    assert result["emp_f1"]["difference"] > 0 and result["perplexity"]["difference"] < 0


def test_a_configuration_over_seeds_is_scored_by_its_seeds_mean_on_the_same_resamples() -> None:
    split = _split()
    sft = _outputs("sft", HYPS, PRED, [1.0, 2.0, 3.0, 4.0])
    gold = _outputs("gold", REFS, GOLD, [0.5, 0.5, 1.0, 1.0])
    other = _outputs("other", HYPS, GOLD, [2.0, 2.0, 2.0, 2.0])
    alone = compare(sft, gold, split, n_resamples=100, seed=4)
    # a group of one is the policy alone; a seed repeated changes nothing
    assert compare([sft], [gold], split, n_resamples=100, seed=4) == alone
    assert compare([sft, sft], [gold, gold], split, n_resamples=100, seed=4) == alone
    pooled = compare([sft], [gold, other], split, n_resamples=100, seed=4)
    tables = {o.name: policy_metrics(o, split) for o in (sft, gold, other)}
    for key, r in pooled.items():
        mean_b = (tables["gold"][key] + tables["other"][key]) / 2
        assert r["metric_b"] == pytest.approx(mean_b), key
        assert r["difference"] == pytest.approx(mean_b - tables["sft"][key]), key
        assert r["ci_low"] <= r["ci_high"], key
    # Emp-F1 on a resample is each seed's Emp-F1 on the same examples, averaged: by hand on one resample
    from pipeline.evaluation.bootstrap import _index_blocks

    first = next(iter(_index_blocks(np.random.default_rng(4), 4, 1)))[0]
    by_hand = np.mean(
        [
            compare(sft, o, split.subset(first, "r"), n_resamples=1)["emp_f1"]["metric_b"]
            for o in (gold, other)
        ]
    )
    single = compare(sft, [gold, other], split.subset(first, "r"), n_resamples=1)["emp_f1"]["metric_b"]
    assert single == pytest.approx(by_hand)


def test_evaluate_compares_groups_of_seeds_with_the_first_group() -> None:
    split = _split()
    outs = [
        _outputs("c0", HYPS, PRED, [1.0] * 4),
        _outputs("c1", HYPS, GOLD, [1.5] * 4),
        _outputs("t0", REFS, GOLD, [2.0] * 4),
        _outputs("t1", REFS, PRED, [3.0] * 4),
    ]
    metrics = evaluate(split, outs, n_resamples=20, seed=3, groups=[("c", ["c0", "c1"]), ("t", ["t0", "t1"])])
    (comparison,) = metrics["comparisons"]
    assert (comparison["baseline"], comparison["policy"]) == ("c", "t")
    assert (comparison["baseline_members"], comparison["policy_members"]) == (["c0", "c1"], ["t0", "t1"])
    assert comparison["metrics"] == {
        k: dict(v) for k, v in compare(outs[:2], outs[2:], split, n_resamples=20, seed=3).items()
    }
    assert set(metrics["policies"]) == {"c0", "c1", "t0", "t1"}  # every seed keeps its own metrics
    for bad in ([("c", ["c0"]), ("t", ["nope"])], [("c", ["c0"]), ("c", ["t0"])], [("c", [])], []):
        with pytest.raises(EvaluationInputError):
            evaluate(split, outs, n_resamples=20, groups=bad)


def test_evaluate_compares_every_policy_with_the_first() -> None:
    split = _split()
    outs = [
        _outputs("sft", HYPS, PRED, [1.0] * 4),
        _outputs("ppo", REFS, GOLD, [2.0] * 4),
        _outputs("greedy", HYPS, GOLD, [3.0] * 4),
    ]
    metrics = evaluate(split, outs, n_resamples=20, seed=3)
    assert list(metrics["policies"]) == metrics["policy_order"] == ["sft", "ppo", "greedy"]
    assert [(c["baseline"], c["policy"]) for c in metrics["comparisons"]] == [
        ("sft", "ppo"),
        ("sft", "greedy"),
    ]
    assert metrics["n_examples"] == 4 and metrics["bootstrap"] == {
        "n_resamples": 20,
        "seed": 3,
        "alpha": 0.05,
    }
    assert metrics["gold"]["level_distribution"]["ER"] == pytest.approx([0.5, 0.25, 0.25])
    assert metrics["gold"]["mean_length"] > 0
    single = evaluate(split, outs[:1], n_resamples=20)
    assert single["comparisons"] == []
    with pytest.raises(EvaluationInputError, match="unique"):
        evaluate(split, [outs[0], outs[0]])


def test_misaligned_outputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="one entry per row"):
        PolicyOutputs(
            "x",
            "f",
            HYPS,
            {m: np.zeros(3, dtype=np.int64) for m in MECHANISMS},
            np.zeros(4),
            np.zeros(4, dtype=np.int64),
        )
    short = _outputs("sft", HYPS[:3], {m: v[:3] for m, v in PRED.items()}, [1.0] * 3)
    with pytest.raises(ValueError, match="3 responses for 4 rows"):
        policy_metrics(short, _split())


def test_responses_table_keeps_every_response_and_level() -> None:
    outs = [_outputs("sft", HYPS, PRED, [1.0] * 4), _outputs("ppo", REFS, GOLD, [2.0] * 4)]
    table = responses_table(_split(), outs)
    assert table.num_rows == 4
    assert table["sft_response"].to_pylist() == list(HYPS)
    assert table["ppo_er_level"].to_pylist() == GOLD["ER"]
    assert table["gold_ip_level"].to_pylist() == GOLD["IP"]
    assert table["gold_response"].to_pylist() == list(REFS)
    assert table["sft_gold_nll"].to_pylist() == [1.0] * 4


def _write(path: Path, **columns: object) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_read_labeled_split_checks_its_input(tmp_path: Path) -> None:
    levels = {f"{m.lower()}_level": GOLD[m] for m in MECHANISMS}
    good = _write(tmp_path / "valid.parquet", context=list(CONTEXTS), response=list(REFS), **levels)
    split = read_labeled_split(good, name="valid", max_examples=3)
    assert len(split) == 3 and split.references == REFS[:3] and split.gold_levels["ER"].tolist() == [0, 0, 1]
    assert len(read_labeled_split(good, name="valid")) == 4
    with pytest.raises(EvaluationInputError, match=r"no labelled 'test' split .*Fix: label it"):
        read_labeled_split(tmp_path / "test.parquet", name="test")
    unlabelled = _write(tmp_path / "raw.parquet", context=list(CONTEXTS), response=list(REFS))
    with pytest.raises(EvaluationInputError, match="er_level, ip_level, ex_level column"):
        read_labeled_split(unlabelled, name="valid")
    empty = _write(
        tmp_path / "empty.parquet",
        context=pa.array([], pa.string()),
        response=pa.array([], pa.string()),
        **{k: pa.array([], pa.int64()) for k in levels},
    )
    with pytest.raises(EvaluationInputError, match="has no rows"):
        read_labeled_split(empty, name="valid")
    bad = _write(
        tmp_path / "bad.parquet",
        context=list(CONTEXTS),
        response=list(REFS),
        **{**levels, "ex_level": [0, 3, 0, 0]},
    )
    with pytest.raises(EvaluationInputError, match="ex_level is 3 at row 1"):
        read_labeled_split(bad, name="valid")
    with pytest.raises(EvaluationInputError, match="max-examples"):
        read_labeled_split(good, name="valid", max_examples=0)


def test_gold_nll_per_example_sums_to_the_batch_nll() -> None:
    tokenizer = train_tokenizer(list(CONTEXTS + REFS) * 3, 400)
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=400, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=2
    )
    model = build_policy(cfg, tokenizer).policy
    model.train(False)
    examples = encode_examples(tokenizer, CONTEXTS, REFS, max_source_len=16, max_target_len=8)
    pad, start = int(tokenizer.pad_token_id), int(model.config.decoder_start_token_id)
    sums, tokens = gold_nll(model, examples, pad_id=pad, decoder_start_id=start, batch_size=3)
    assert tokens.tolist() == examples.target_lengths.tolist()
    with torch.no_grad():
        batch = collate(examples, list(range(len(examples))), pad_id=pad, decoder_start_id=start)
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            decoder_input_ids=batch.decoder_input_ids,
        ).logits
        total, count = token_nll(logits, batch.labels)
        one, _ = token_nll(logits[2:3], batch.labels[2:3])
    assert sums.sum() == pytest.approx(float(total), rel=1e-5) and tokens.sum() == int(count)
    assert sums[2] == pytest.approx(float(one), rel=1e-5)
    assert perplexity(sums.sum(), int(tokens.sum())) == pytest.approx(
        math.exp(float(total) / int(count)), rel=1e-5
    )
