"""Classification metrics for the empathy identifiers (and Emp-F1): accuracy, per-class P/R/F1,
macro and weighted F1, confusion matrix. Definitions follow scikit-learn (zero division → 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


def confusion_matrix(
    gold: Sequence[int] | IntArray, pred: Sequence[int] | IntArray, num_classes: int
) -> IntArray:
    """(C, C) counts; row = gold class, column = predicted class."""
    g, p = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if g.shape != p.shape:
        raise ValueError(f"gold has {g.shape[0]} labels but pred has {p.shape[0]}")
    for name, arr in (("gold", g), ("pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} labels must be in [0, {num_classes}), got {sorted(set(arr.tolist()))}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (g, p), 1)
    return matrix


def classification_report(
    gold: Sequence[int] | IntArray, pred: Sequence[int] | IntArray, num_classes: int = 3
) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class precision/recall/F1/support and the confusion matrix.

    Precision, recall and F1 of a class with no predictions or no gold examples are 0, as in
    ``sklearn.metrics`` with ``zero_division=0``; weighted F1 weights classes by gold support.
    """
    matrix = confusion_matrix(gold, pred, num_classes)
    total = int(matrix.sum())
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "n": total,
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
        "per_class": {
            str(c): {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c in range(num_classes)
        },
        "confusion_matrix": matrix.tolist(),
    }


def majority_baseline(
    train_gold: Sequence[int] | IntArray, test_gold: Sequence[int] | IntArray
) -> dict[str, Any]:
    """The report of always predicting the most frequent training class."""
    counts = np.bincount(np.asarray(train_gold, dtype=np.int64), minlength=3)
    test = np.asarray(test_gold, dtype=np.int64)
    return classification_report(test, np.full_like(test, int(counts.argmax())), max(3, len(counts)))


def level_distribution(levels: Sequence[int] | IntArray, num_classes: int = 3) -> list[float]:
    """Fraction of items at each level, ``[count(level == k) / N for k in range(num_classes)]``.

    All zeros when ``levels`` is empty; levels outside ``[0, num_classes)`` are an error.
    """
    arr = np.asarray(levels, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"levels must be one level per item, shape (N,), got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"levels must be in [0, {num_classes}), got {sorted(set(arr.tolist()))}")
    if not arr.size:
        return [0.0] * num_classes
    return [float(count) / arr.size for count in np.bincount(arr, minlength=num_classes)]


def emp_f1(
    gold_levels: Mapping[str, Sequence[int] | IntArray],
    pred_levels: Mapping[str, Sequence[int] | IntArray],
    num_classes: int = 3,
) -> dict[str, Any]:
    """Emp-F1 (EmpRL): mean over mechanisms of the weighted F1 ×100 of predicted vs gold levels.

    ``gold_levels[m]`` and ``pred_levels[m]`` are ``(N,)`` levels of mechanism ``m`` (e.g. ER/IP/EX)
    for the same N items; ``pred_levels`` are the identifiers' argmax levels of generated responses.
    Returns ``emp_f1`` and ``per_mechanism[m]`` with ``weighted_f1``, ``macro_f1`` and ``accuracy``
    (all ×100), ``confusion_matrix`` (row = gold, column = predicted), ``n``, and the
    ``gold_distribution`` / ``pred_distribution`` of :func:`level_distribution`.
    """
    if not gold_levels:
        raise ValueError("gold_levels is empty; pass one (N,) level array per mechanism, e.g. ER/IP/EX")
    if set(gold_levels) != set(pred_levels):
        raise ValueError(
            f"gold_levels has mechanisms {sorted(gold_levels)} but pred_levels has {sorted(pred_levels)}; "
            "score the same mechanisms on both sides"
        )
    sizes = {m: len(levels) for m, levels in gold_levels.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"gold_levels must cover the same items for every mechanism, got sizes {sizes}")
    per_mechanism: dict[str, dict[str, Any]] = {}
    for mechanism, gold in gold_levels.items():
        pred = pred_levels[mechanism]
        try:
            report = classification_report(gold, pred, num_classes)
        except ValueError as err:
            raise ValueError(f"mechanism {mechanism}: {err}") from err
        per_mechanism[mechanism] = {
            "weighted_f1": 100.0 * report["weighted_f1"],
            "macro_f1": 100.0 * report["macro_f1"],
            "accuracy": 100.0 * report["accuracy"],
            "n": report["n"],
            "confusion_matrix": report["confusion_matrix"],
            "gold_distribution": level_distribution(gold, num_classes),
            "pred_distribution": level_distribution(pred, num_classes),
        }
    mean_f1 = float(np.mean([m["weighted_f1"] for m in per_mechanism.values()]))
    return {"emp_f1": mean_f1, "per_mechanism": per_mechanism}
