"""Classification metrics against hand-computed values and a slow reference loop."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.classification import (
    classification_report,
    confusion_matrix,
    emp_f1,
    level_distribution,
    majority_baseline,
)


def test_hand_computed_case() -> None:
    gold = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    report = classification_report(gold, pred, 3)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    # class 0: P 2/2 R 2/3 F1 0.8; class 1: P 1/2 R 1/2 F1 0.5; class 2: P 1/2 R 1 F1 2/3
    f1 = [0.8, 0.5, 2 / 3]
    assert [report["per_class"][str(c)]["f1"] for c in range(3)] == pytest.approx(f1)
    assert report["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert report["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert report["per_class"]["0"]["support"] == 3


def test_zero_division_gives_zero_like_sklearn() -> None:
    report = classification_report([0, 0, 1], [0, 0, 0], 3)
    assert report["per_class"]["1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_class"]["2"]["f1"] == 0.0  # absent class still counts in the macro mean
    assert report["macro_f1"] == pytest.approx((0.8 + 0 + 0) / 3)


def _reference(gold: list[int], pred: list[int], c: int) -> tuple[float, float, float]:
    tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == p == c)
    fp = sum(1 for g, p in zip(gold, pred, strict=True) if p == c and g != c)
    fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p != c)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec else 0.0)


def test_matches_slow_reference_loop_on_random_labels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        gold, pred = rng.integers(0, 3, n).tolist(), rng.integers(0, 3, n).tolist()
        report = classification_report(gold, pred, 3)
        for c in range(3):
            p, r, f = _reference(gold, pred, c)
            got = report["per_class"][str(c)]
            assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f))
        assert sum(map(sum, report["confusion_matrix"])) == n


def test_matches_sklearn_when_available() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    gold, pred = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    report = classification_report(gold, pred, 3)
    assert report["macro_f1"] == pytest.approx(metrics.f1_score(gold, pred, average="macro", zero_division=0))
    assert report["weighted_f1"] == pytest.approx(
        metrics.f1_score(gold, pred, average="weighted", zero_division=0)
    )
    assert report["confusion_matrix"] == metrics.confusion_matrix(gold, pred, labels=[0, 1, 2]).tolist()


def test_invariants_and_errors() -> None:
    perfect = classification_report([0, 1, 2, 2], [0, 1, 2, 2], 3)
    assert perfect["accuracy"] == perfect["macro_f1"] == perfect["weighted_f1"] == 1.0
    with pytest.raises(ValueError, match="gold has 2 labels but pred has 3"):
        confusion_matrix([0, 1], [0, 1, 2], 3)
    with pytest.raises(ValueError, match=r"pred labels must be in \[0, 3\)"):
        confusion_matrix([0, 1], [0, 3], 3)


def test_majority_baseline_predicts_the_most_frequent_training_class() -> None:
    report = majority_baseline([0, 0, 0, 1, 2], [0, 1, 2, 0])
    assert report["accuracy"] == 0.5
    assert report["confusion_matrix"] == [[2, 0, 0], [1, 0, 0], [1, 0, 0]]


def test_emp_f1_hand_computed() -> None:
    gold = {"ER": [0, 0, 0, 1, 1, 2], "IP": [0, 1, 2, 2, 0, 0], "EX": [0, 0, 1, 1, 2, 2]}
    pred = {"ER": [0, 0, 1, 1, 2, 2], "IP": [0, 1, 2, 2, 0, 0], "EX": [1, 1, 0, 0, 0, 0]}
    result = emp_f1(gold, pred)
    er = 100 * (3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6  # per-class F1 from test_hand_computed_case
    assert result["per_mechanism"]["ER"]["weighted_f1"] == pytest.approx(er)
    assert result["per_mechanism"]["IP"]["weighted_f1"] == pytest.approx(100.0)
    assert result["per_mechanism"]["EX"]["weighted_f1"] == 0.0  # nothing right
    assert result["emp_f1"] == pytest.approx((er + 100.0 + 0.0) / 3)
    er_report = result["per_mechanism"]["ER"]
    assert er_report["accuracy"] == pytest.approx(100 * 4 / 6)
    assert er_report["macro_f1"] == pytest.approx(100 * (0.8 + 0.5 + 2 / 3) / 3)
    assert er_report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert er_report["n"] == 6
    assert er_report["gold_distribution"] == pytest.approx([3 / 6, 2 / 6, 1 / 6])
    assert er_report["pred_distribution"] == pytest.approx([2 / 6, 2 / 6, 2 / 6])
    assert list(result["per_mechanism"]) == ["ER", "IP", "EX"]


def test_emp_f1_matches_sklearn_weighted_f1() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    gold = {m: rng.choice(3, 300, p=[0.6, 0.1, 0.3]) for m in ("ER", "IP", "EX")}
    pred = {m: rng.choice(3, 300, p=[0.5, 0.2, 0.3]) for m in ("ER", "IP", "EX")}
    result = emp_f1(gold, pred)
    expected = {
        m: 100 * metrics.f1_score(gold[m], pred[m], average="weighted", labels=[0, 1, 2], zero_division=0)
        for m in gold
    }
    for m, value in expected.items():
        assert result["per_mechanism"][m]["weighted_f1"] == pytest.approx(value)
        assert result["per_mechanism"][m]["accuracy"] == pytest.approx(
            100 * metrics.accuracy_score(gold[m], pred[m])
        )
    assert result["emp_f1"] == pytest.approx(np.mean(list(expected.values())))


def test_emp_f1_errors_name_the_mechanism() -> None:
    with pytest.raises(
        ValueError, match=r"gold_levels has mechanisms \['ER', 'IP'\] but pred_levels has \['ER'\]"
    ):
        emp_f1({"ER": [0], "IP": [1]}, {"ER": [0]})
    with pytest.raises(ValueError, match="mechanism IP: gold has 2 labels but pred has 1"):
        emp_f1({"ER": [0, 1], "IP": [1, 2]}, {"ER": [0, 1], "IP": [1]})
    with pytest.raises(ValueError, match=r"same items for every mechanism, got sizes \{'ER': 2, 'IP': 1\}"):
        emp_f1({"ER": [0, 1], "IP": [1]}, {"ER": [0, 1], "IP": [1]})
    with pytest.raises(ValueError, match="gold_levels is empty"):
        emp_f1({}, {})


def test_level_distribution() -> None:
    assert level_distribution([0, 0, 1, 2]) == [0.5, 0.25, 0.25]
    assert level_distribution(np.array([2, 2, 2])) == [0.0, 0.0, 1.0]
    assert level_distribution([1, 0], num_classes=4) == [0.5, 0.5, 0.0, 0.0]
    assert level_distribution([]) == [0.0, 0.0, 0.0]
    levels = np.random.default_rng(3).integers(0, 3, 101)
    assert sum(level_distribution(levels)) == pytest.approx(1.0)
    assert level_distribution(levels) == pytest.approx(np.bincount(levels, minlength=3) / 101)
    with pytest.raises(ValueError, match=r"levels must be in \[0, 3\), got \[0, 3\]"):
        level_distribution([0, 3])
    with pytest.raises(ValueError, match=r"shape \(N,\), got shape \(2, 1\)"):
        level_distribution([[0], [1]])  # type: ignore[list-item]
