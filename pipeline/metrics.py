"""Classification metrics for the empathy identifiers (and Emp-F1): accuracy, per-class P/R/F1,
macro and weighted F1, confusion matrix. Definitions follow scikit-learn (zero division → 0).
"""

from __future__ import annotations

from collections.abc import Sequence
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
