"""Paired bootstrap: hand-computed cases, a slow reference loop, invariants and corpus-level metrics."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

import pipeline.evaluation.bootstrap as bootstrap_module
from pipeline.evaluation.bootstrap import bootstrap_std_error, paired_bootstrap, paired_bootstrap_mean
from pipeline.evaluation.classification import emp_f1
from pipeline.evaluation.text import bleu, bleu_from_stats, bleu_stats, distinct_n

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _mean(values: FloatArray, idx: IntArray) -> float:
    return float(values[idx].mean())


def _dist2(texts: list[str], idx: IntArray) -> float:
    return distinct_n([texts[i] for i in idx], 2)


def test_identical_systems_give_zero_difference_and_a_zero_interval() -> None:
    values = np.random.default_rng(0).normal(size=50)
    for result in (
        paired_bootstrap(_mean, values, values.copy(), n_resamples=200),
        paired_bootstrap_mean(values, values.copy(), n_resamples=200),
        paired_bootstrap(_dist2, ["a b c", "a b", "c d e f"], ["a b c", "a b", "c d e f"], n_resamples=50),
    ):
        assert result["difference"] == result["ci_low"] == result["ci_high"] == result["std_error"] == 0.0
        assert result["p_value"] == 1.0
        assert result["metric_a"] == result["metric_b"]


def test_one_item_makes_every_resample_the_observed_difference() -> None:
    result = paired_bootstrap_mean([0.25], [1.0], n_resamples=30, alpha=0.1)
    assert result["difference"] == result["ci_low"] == result["ci_high"] == pytest.approx(0.75)
    assert result["p_value"] == 0.0
    assert (result["n_items"], result["n_resamples"], result["alpha"], result["seed"]) == (1, 30, 0.1, 0)


def test_p_value_counts_ties_as_not_better() -> None:
    # delta = b - a = [1, 0]; a resample's mean difference is <= 0 only when it draws item 1 twice.
    result = paired_bootstrap_mean([0.0, 0.0], [1.0, 0.0], n_resamples=4000, seed=3)
    assert result["difference"] == 0.5
    assert result["p_value"] == pytest.approx(0.25, abs=0.03)
    worse = paired_bootstrap_mean([1.0, 0.0], [0.0, 0.0], n_resamples=4000, seed=3)
    assert worse["difference"] == -0.5
    assert worse["p_value"] == pytest.approx(result["p_value"])  # mirror image, same resamples


def test_matches_a_slow_reference_loop() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=37), rng.normal(0.3, size=37)
    ref_rng = np.random.default_rng(7)
    diffs = []
    for _ in range(300):
        idx = ref_rng.integers(0, 37, size=37)
        diffs.append(np.mean([b[i] for i in idx]) - np.mean([a[i] for i in idx]))
    observed = b.mean() - a.mean()
    expected_p = np.mean(np.array(diffs) <= 0) if observed > 0 else np.mean(np.array(diffs) >= 0)
    for result in (
        paired_bootstrap(_mean, a, b, n_resamples=300, seed=7, alpha=0.1),
        paired_bootstrap_mean(a, b, n_resamples=300, seed=7, alpha=0.1),
    ):
        assert result["difference"] == pytest.approx(observed)
        assert result["ci_low"] == pytest.approx(np.percentile(diffs, 5))
        assert result["ci_high"] == pytest.approx(np.percentile(diffs, 95))
        assert result["std_error"] == pytest.approx(np.std(diffs))
        assert result["p_value"] == pytest.approx(expected_p)


def test_interval_of_a_mean_difference_agrees_with_normal_theory() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(0.0, 1.0, size=400)
    b = a + rng.normal(0.2, 0.5, size=400)
    result = paired_bootstrap_mean(a, b, n_resamples=4000)
    half_width = 1.96 * (b - a).std() / np.sqrt(400)
    assert result["ci_high"] - result["ci_low"] == pytest.approx(2 * half_width, rel=0.1)
    assert result["ci_low"] < result["difference"] < result["ci_high"]
    assert result["p_value"] < 0.001  # b is better by ~8 standard errors


def test_blocked_draws_match_the_mean_shortcut_and_are_reproducible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap_module, "_BLOCK_ELEMENTS", 50)  # 2 rows of 25 per block
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=25), rng.normal(size=25)
    slow = paired_bootstrap(_mean, a, b, n_resamples=101, seed=5)
    fast = paired_bootstrap_mean(a, b, n_resamples=101, seed=5)
    assert slow["n_resamples"] == fast["n_resamples"] == 101
    for key in ("difference", "ci_low", "ci_high", "std_error", "p_value"):
        assert slow[key] == pytest.approx(fast[key])
    assert paired_bootstrap_mean(a, b, n_resamples=101, seed=5) == fast
    assert paired_bootstrap_mean(a, b, n_resamples=101, seed=6)["ci_low"] != fast["ci_low"]


def test_corpus_level_metrics_dist_bleu_and_emp_f1() -> None:
    refs = ["i am sorry to hear that", "that is great news", "what happened then", "oh no that is sad"] * 5
    dull = ["i am sorry to hear that"] * 20
    varied = [f"{r} {i}" for i, r in enumerate(refs)]

    dist = paired_bootstrap(_dist2, dull, varied, n_resamples=200)
    assert dist["difference"] == pytest.approx(distinct_n(varied, 2) - distinct_n(dull, 2))
    assert dist["ci_low"] > 0 and dist["p_value"] == 0.0

    def bleu4(stats: IntArray, idx: IntArray) -> float:
        return bleu_from_stats(stats[idx])["bleu4"]

    result = paired_bootstrap(bleu4, bleu_stats(dull, refs), bleu_stats(varied, refs), n_resamples=200)
    assert result["metric_a"] == pytest.approx(bleu(dull, refs)["bleu4"])
    assert result["metric_b"] == pytest.approx(bleu(varied, refs)["bleu4"])
    assert result["ci_low"] <= result["difference"] <= result["ci_high"]

    rng = np.random.default_rng(6)
    mechanisms = ("ER", "IP", "EX")
    gold = rng.integers(0, 3, size=(60, 3))
    good = np.where(rng.random((60, 3)) < 0.8, gold, rng.integers(0, 3, size=(60, 3)))
    bad = rng.integers(0, 3, size=(60, 3))

    def f1(pred: IntArray, idx: IntArray) -> float:
        return float(
            emp_f1(
                {m: gold[idx, k] for k, m in enumerate(mechanisms)},
                {m: pred[idx, k] for k, m in enumerate(mechanisms)},
            )["emp_f1"]
        )

    emp = paired_bootstrap(f1, bad, good, n_resamples=200)
    assert emp["difference"] == pytest.approx(f1(good, np.arange(60)) - f1(bad, np.arange(60)))
    assert emp["ci_low"] > 0 and emp["p_value"] < 0.01


def test_errors_name_the_bad_input() -> None:
    with pytest.raises(ValueError, match="a has 3 items but b has 2"):
        paired_bootstrap_mean([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="a and b are empty"):
        paired_bootstrap_mean([], [])
    with pytest.raises(ValueError, match="n_resamples must be >= 1"):
        paired_bootstrap_mean([1.0], [2.0], n_resamples=0)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        paired_bootstrap_mean([1.0], [2.0], alpha=1.5)
    with pytest.raises(ValueError, match=r"b must be one score per item, shape \(N,\)"):
        paired_bootstrap_mean([1.0, 2.0], [[1.0], [2.0]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="a has a non-finite score at item 1"):
        paired_bootstrap_mean([1.0, float("nan")], [1.0, 2.0])

    def undefined_on_repeats(values: FloatArray, idx: IntArray) -> float:
        return float(values[idx].mean()) if len(set(idx.tolist())) == len(idx) else float("nan")

    with pytest.raises(ValueError, match="returned nan for system a on resample 0"):
        paired_bootstrap(undefined_on_repeats, np.arange(5.0), np.arange(5.0), n_resamples=10)


def test_the_standard_error_of_a_mean_is_its_textbook_value() -> None:
    values = np.random.default_rng(3).normal(5.0, 2.0, size=400)
    se = bootstrap_std_error(lambda idx: float(values[idx].mean()), len(values), n_resamples=2000, seed=1)
    textbook = values.std(ddof=1) / np.sqrt(len(values))  # 0.1
    assert se == pytest.approx(textbook, rel=0.08)
    # at a quarter of the items, twice the standard error: 1/sqrt(size)
    quarter = bootstrap_std_error(lambda idx: float(values[idx].mean()), 400, size=100, n_resamples=2000)
    assert quarter == pytest.approx(2 * textbook, rel=0.1)
    assert bootstrap_std_error(lambda idx: 1.0, 10) == 0.0  # a constant metric has no noise
    assert np.isnan(bootstrap_std_error(lambda idx: 1.0, 1))
    with pytest.raises(ValueError, match="n_resamples must be >= 2"):
        bootstrap_std_error(lambda idx: 1.0, 10, n_resamples=1)
