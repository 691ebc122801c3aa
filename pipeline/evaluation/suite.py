"""Evaluation of generated responses: Emp-F1 and the paper's metrics, with paired bootstrap CIs.

From what evaluation workers return (response text, the identifiers' predicted levels, the policy's
teacher-forced NLL of each gold response) and the labelled split (gold responses and levels) to one
JSON-ready metrics dict: per policy Emp-F1, per-mechanism F1/accuracy/confusion matrices, Dist-1/2,
BLEU-1..4, ROUGE-L, length and perplexity; for every policy after the first, paired bootstrap CIs
of its differences from the first (:mod:`pipeline.evaluation.bootstrap`, the same resamples for every metric).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import MECHANISMS
from pipeline.evaluation.bootstrap import (
    BootstrapResult,
    FloatArray,
    IntArray,
    paired_bootstrap,
    paired_bootstrap_mean,
)
from pipeline.evaluation.classification import classification_report, emp_f1, level_distribution
from pipeline.evaluation.text import (
    bleu_from_stats,
    bleu_stats,
    distinct_n,
    lengths,
    mean_length,
    rouge_l_scores,
    tokenize,
)
from pipeline.training.sft import perplexity

logger = logging.getLogger(__name__)


class EvaluationInputError(ValueError):
    """An evaluation input is missing or unusable; the message names it and the fix."""


@dataclass(frozen=True)
class MetricSpec:
    """One row of the metrics table: key in a policy's metrics, label, decimals, better direction."""

    key: str
    label: str
    digits: int
    better: Literal["higher", "lower"] | None


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("emp_f1", "Emp-F1", 2, "higher"),
    *(MetricSpec(f"{m.lower()}_f1", f"{m} weighted F1", 2, "higher") for m in MECHANISMS),
    MetricSpec("perplexity", "Perplexity (gold)", 2, "lower"),
    MetricSpec("dist1", "Dist-1", 4, "higher"),
    MetricSpec("dist2", "Dist-2", 4, "higher"),
    *(MetricSpec(f"bleu{n}", f"BLEU-{n}", 2, "higher") for n in range(1, 5)),
    MetricSpec("rouge_l", "ROUGE-L", 2, "higher"),
    MetricSpec("mean_length", "Length (tokens)", 2, None),
)
"""The reported metrics, in table order; every one is bootstrapped when policies are compared."""

GOLD_METRICS = ("dist1", "dist2", "mean_length")
"""Metrics that also describe the gold responses themselves (the table's ``gold`` column)."""


@dataclass(frozen=True)
class LabeledSplit:
    """An ED split with gold listener responses and their identifier levels (the label stage's output)."""

    name: str
    contexts: tuple[str, ...]
    references: tuple[str, ...]
    """Gold listener responses."""
    gold_levels: dict[str, IntArray]
    """Mechanism -> (N,) level of the gold response (0/1/2)."""

    def __len__(self) -> int:
        return len(self.contexts)

    def subset(self, rows: Sequence[int] | IntArray, name: str) -> LabeledSplit:
        """The rows ``rows`` (in the order given) as a split named ``name``."""
        index = np.asarray(rows, dtype=np.int64)
        return LabeledSplit(
            name=name,
            contexts=tuple(self.contexts[i] for i in index),
            references=tuple(self.references[i] for i in index),
            gold_levels={m: v[index] for m, v in self.gold_levels.items()},
        )


def read_labeled_split(path: str | Path, *, name: str, max_examples: int | None = None) -> LabeledSplit:
    """The first ``max_examples`` rows (all when ``None``) of a labelled split parquet, checked.

    Raises:
        EvaluationInputError: the file is missing, lacks a text or level column, is empty, or holds a
            level outside 0..2 or a null.
    """
    path = Path(path)
    fix_label = (
        f"Fix: label it with `emprl identifiers label --run-dir <run>` (data.splits must include {name!r}), "
        "or pass --split with a labelled split."
    )
    if not path.is_file():
        raise EvaluationInputError(f"no labelled {name!r} split at {path}. {fix_label}")
    if max_examples is not None and max_examples < 1:
        raise EvaluationInputError(f"--max-examples must be >= 1 (or omitted for all), got {max_examples}")
    columns = ["context", "response", *(f"{m.lower()}_level" for m in MECHANISMS)]
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise EvaluationInputError(
            f"{path} has no {', '.join(missing)} column(s) (columns: {names}); evaluation needs the gold "
            f"responses and their ER/IP/EX levels. {fix_label}"
        )
    table = pq.read_table(path, columns=columns)
    if max_examples is not None:
        table = table.slice(0, max_examples)
    if table.num_rows == 0:
        raise EvaluationInputError(f"{path} has no rows. Fix: label a non-empty ED {name!r} split.")
    for column in columns:
        if table[column].null_count:
            raise EvaluationInputError(
                f"{path}: column {column} has {table[column].null_count} null value(s). {fix_label}"
            )
    levels = {m: table[f"{m.lower()}_level"].to_numpy().astype(np.int64) for m in MECHANISMS}
    for m, v in levels.items():
        if v.min() < 0 or v.max() > 2:
            bad = int(np.argmax((v < 0) | (v > 2)))
            raise EvaluationInputError(
                f"{path}: {m.lower()}_level is {int(v[bad])} at row {bad}; levels are 0, 1, 2. {fix_label}"
            )
    return LabeledSplit(
        name=name,
        contexts=tuple(table["context"].to_pylist()),
        references=tuple(table["response"].to_pylist()),
        gold_levels=levels,
    )


@dataclass(frozen=True)
class PolicyOutputs:
    """One policy's results on a split, aligned with its rows."""

    name: str
    folder: str
    responses: tuple[str, ...]
    """Generated responses."""
    pred_levels: dict[str, IntArray]
    """Mechanism -> (N,) identifier-predicted level of each generated response."""
    nll_sums: FloatArray
    """(N,) Σ_t −log π(y_t | y_<t, x) of each gold response (teacher forced)."""
    nll_tokens: IntArray
    """(N,) gold response tokens that count in ``nll_sums`` (with ``</s>``)."""

    def __post_init__(self) -> None:
        n = len(self.responses)
        sizes = {
            **{f"pred_levels[{m}]": len(v) for m, v in self.pred_levels.items()},
            "nll_sums": len(self.nll_sums),
            "nll_tokens": len(self.nll_tokens),
        }
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            raise ValueError(
                f"policy {self.name!r}: {n} responses but {bad}; every field needs one entry per row"
            )


def policy_metrics(outputs: PolicyOutputs, split: LabeledSplit) -> dict[str, Any]:
    """Every metric of one policy: the keys of :data:`METRICS`, per-mechanism details and NLL totals."""
    _check_aligned(outputs, split)
    refs, hyps = list(split.references), list(outputs.responses)
    emp = emp_f1(split.gold_levels, outputs.pred_levels)
    nll, tokens = float(outputs.nll_sums.sum()), int(outputs.nll_tokens.sum())
    out: dict[str, Any] = {"folder": outputs.folder, "emp_f1": emp["emp_f1"]}
    for m, details in emp["per_mechanism"].items():
        out[f"{m.lower()}_f1"] = details["weighted_f1"]
        out[f"{m.lower()}_accuracy"] = details["accuracy"]
    out.update(
        {
            "perplexity": perplexity(nll, tokens),
            "gold_nll_per_token": nll / tokens if tokens else math.nan,
            "gold_tokens": tokens,
            "dist1": distinct_n(hyps, 1),
            "dist2": distinct_n(hyps, 2),
            **bleu_from_stats(bleu_stats(hyps, refs)),
            "rouge_l": float(rouge_l_scores(hyps, refs).mean()),
            "mean_length": mean_length(hyps),
            "per_mechanism": emp["per_mechanism"],
        }
    )
    return out


@dataclass(frozen=True)
class NgramIndex:
    """One system's n-grams as integer ids, for corpus Dist-n of resampled item multisets."""

    ids: IntArray
    """(G,) id of every n-gram of every item, items concatenated."""
    item: IntArray
    """(G,) the item each n-gram belongs to."""
    counts: IntArray
    """(N,) n-grams per item."""
    vocab: int

    def __len__(self) -> int:
        return len(self.counts)

    @classmethod
    def build(cls, texts: Sequence[str], n: int) -> NgramIndex:
        """n-grams of :func:`pipeline.evaluation.text.tokenize` tokens, never crossing items (as :func:`distinct_n`)."""
        table: dict[tuple[str, ...], int] = {}
        ids: list[int] = []
        counts = np.zeros(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            tokens = tokenize(text)
            grams = [tuple(tokens[k : k + n]) for k in range(len(tokens) - n + 1)]
            ids += [table.setdefault(g, len(table)) for g in grams]
            counts[i] = len(grams)
        item = np.repeat(np.arange(len(texts), dtype=np.int64), counts)
        return cls(np.asarray(ids, dtype=np.int64), item, counts, len(table))

    def distinct(self, indices: IntArray) -> float:
        """Dist-n of the items ``indices`` (repeats repeat their n-grams): distinct / total n-grams."""
        total = int(self.counts[indices].sum())
        if total == 0:
            return 0.0
        chosen = np.zeros(len(self.counts), dtype=bool)
        chosen[indices] = True
        present = np.zeros(self.vocab, dtype=bool)
        present[self.ids[chosen[self.item]]] = True
        return int(present.sum()) / total


@dataclass(frozen=True)
class Seeds:
    """One system's per-item data for each of its seeds (the same items, one entry per item each): what
    :func:`compare` resamples for a configuration trained with several seeds."""

    members: tuple[Any, ...]

    def __len__(self) -> int:
        return len(self.members[0])


def seed_mean(fn: Callable[[Any, IntArray], float]) -> Callable[[Seeds, IntArray], float]:
    """``fn`` of one seed's data on the items ``idx``, averaged over the seeds."""
    return lambda seeds, idx: float(np.mean([fn(member, idx) for member in seeds.members]))


def compare(
    a: PolicyOutputs | Sequence[PolicyOutputs],
    b: PolicyOutputs | Sequence[PolicyOutputs],
    split: LabeledSplit,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, BootstrapResult]:
    """Paired bootstrap of ``metric(b) − metric(a)`` for every key of :data:`METRICS`.

    ``a`` and ``b`` are one policy each, or a configuration's policies over its training seeds: a
    configuration's metric on a resample is the mean of its seeds' metrics on the same items, so every
    resample draws examples (the unit the split samples) and keeps each example's seeds together; the
    interval is over examples for these seeds, not over seeds.

    Every metric uses the same ``seed`` and so the same resamples. Corpus-level metrics are recomputed
    on each resample (Emp-F1 and per-mechanism F1 from levels, BLEU from summed :func:`bleu_stats`,
    Dist-n from n-gram ids, perplexity from summed NLL and tokens); ROUGE-L and length are item means.
    """
    group_a, group_b = _seeds(a), _seeds(b)
    for o in (*group_a, *group_b):
        _check_aligned(o, split)
    gold = split.gold_levels
    mechanisms = tuple(gold)
    refs = list(split.references)
    kw: dict[str, Any] = {"n_resamples": n_resamples, "seed": seed, "alpha": alpha}

    def paired(fn: Callable[[Any, IntArray], float], data: Callable[[PolicyOutputs], Any]) -> BootstrapResult:
        return paired_bootstrap(
            seed_mean(fn), Seeds(tuple(map(data, group_a))), Seeds(tuple(map(data, group_b))), **kw
        )

    def paired_mean(scores: Callable[[PolicyOutputs], FloatArray]) -> BootstrapResult:
        # the mean over seeds of per-item means is the per-item mean over seeds, averaged over items
        return paired_bootstrap_mean(
            np.mean([scores(o) for o in group_a], axis=0), np.mean([scores(o) for o in group_b], axis=0), **kw
        )

    def levels(o: PolicyOutputs) -> IntArray:
        return np.stack([o.pred_levels[m] for m in mechanisms], axis=1)

    def emp(pred: IntArray, idx: IntArray) -> float:
        picked = {m: pred[idx, j] for j, m in enumerate(mechanisms)}
        return float(emp_f1({m: gold[m][idx] for m in mechanisms}, picked)["emp_f1"])

    def mechanism_f1(j: int) -> Callable[[IntArray, IntArray], float]:
        g = gold[mechanisms[j]]
        return lambda pred, idx: 100.0 * float(classification_report(g[idx], pred[idx, j])["weighted_f1"])

    def nll_table(o: PolicyOutputs) -> FloatArray:
        return np.stack([o.nll_sums, o.nll_tokens.astype(np.float64)], axis=1)

    def ppl(table: FloatArray, idx: IntArray) -> float:
        return perplexity(float(table[idx, 0].sum()), int(table[idx, 1].sum()))

    out: dict[str, BootstrapResult] = {"emp_f1": paired(emp, levels)}
    for j, m in enumerate(mechanisms):
        out[f"{m.lower()}_f1"] = paired(mechanism_f1(j), levels)
    if all(math.isfinite(ppl(nll_table(o), _all(o))) for o in (*group_a, *group_b)):
        out["perplexity"] = paired(ppl, nll_table)
    else:
        logger.warning("a perplexity of %s or %s is not finite: no bootstrap for it", _names(a), _names(b))
    for n in (1, 2):
        out[f"dist{n}"] = paired(NgramIndex.distinct, partial(_ngrams, n=n))
    stats = {id(o): bleu_stats(list(o.responses), refs) for o in (*group_a, *group_b)}
    for n in range(1, 5):
        out[f"bleu{n}"] = paired(_bleu_n(n), lambda o: stats[id(o)])
    out["rouge_l"] = paired_mean(lambda o: rouge_l_scores(list(o.responses), refs))
    out["mean_length"] = paired_mean(lambda o: lengths(list(o.responses)).astype(np.float64))
    return out


def _ngrams(o: PolicyOutputs, n: int) -> NgramIndex:
    return NgramIndex.build(o.responses, n)


def _seeds(outputs: PolicyOutputs | Sequence[PolicyOutputs]) -> tuple[PolicyOutputs, ...]:
    group = (outputs,) if isinstance(outputs, PolicyOutputs) else tuple(outputs)
    if not group:
        raise ValueError("compare needs at least one policy on each side")
    return group


def _names(outputs: PolicyOutputs | Sequence[PolicyOutputs]) -> str:
    return "+".join(o.name for o in _seeds(outputs))


def evaluate(
    split: LabeledSplit,
    outputs: Sequence[PolicyOutputs],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Sequence[tuple[str, Sequence[str]]] | None = None,
) -> dict[str, Any]:
    """The metrics dict of ``metrics.json``.

    Keys: ``split``, ``n_examples``, ``gold`` (level distribution per mechanism and the
    :data:`GOLD_METRICS` of the gold responses), ``policy_order`` (names as given: JSON writers may
    sort keys), ``policies`` (name -> :func:`policy_metrics`), ``comparisons`` and ``bootstrap`` (its
    settings). ``groups`` (default: each policy alone, in order) names the compared systems: ``(name,
    policy names)``, a configuration's policies over its seeds (:func:`compare`). Each group after the first
    has a comparison with the first: ``baseline`` and ``policy`` (group names), ``baseline_members`` and
    ``policy_members`` and ``metrics``, key -> :class:`~pipeline.evaluation.bootstrap.BootstrapResult` of
    policy − baseline.
    """
    if not outputs:
        raise EvaluationInputError("no policy to evaluate. Fix: pass at least one --policy NAME=FOLDER.")
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise EvaluationInputError(f"policy names must be unique, got {names}")
    by_name = {o.name: o for o in outputs}
    systems = [(o.name, [o.name]) for o in outputs] if groups is None else [(g, list(m)) for g, m in groups]
    _check_groups(systems, by_name)
    refs = list(split.references)
    metrics: dict[str, Any] = {
        "split": split.name,
        "n_examples": len(split),
        "gold": {
            "level_distribution": {m: level_distribution(v) for m, v in split.gold_levels.items()},
            "dist1": distinct_n(refs, 1),
            "dist2": distinct_n(refs, 2),
            "mean_length": mean_length(refs),
        },
        "policy_order": names,
        "policies": {o.name: policy_metrics(o, split) for o in outputs},
        "comparisons": [],
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "alpha": alpha},
    }
    base, base_members = systems[0]
    for name, members in systems[1:]:
        logger.info("paired bootstrap: %s vs %s, %d resamples per metric", name, base, n_resamples)
        result = compare(
            [by_name[m] for m in base_members],
            [by_name[m] for m in members],
            split,
            n_resamples=n_resamples,
            seed=seed,
            alpha=alpha,
        )
        metrics["comparisons"].append(
            {
                "baseline": base,
                "policy": name,
                "baseline_members": base_members,
                "policy_members": members,
                "metrics": {k: dict(v) for k, v in result.items()},
            }
        )
    return metrics


def _check_groups(groups: Sequence[tuple[str, Sequence[str]]], policies: Mapping[str, Any]) -> None:
    if not groups:
        raise EvaluationInputError("groups is empty: name at least the baseline group")
    names = [g for g, _ in groups]
    if len(set(names)) != len(names):
        raise EvaluationInputError(f"group names must be unique, got {names}")
    for name, members in groups:
        unknown = [m for m in members if m not in policies]
        if not members or unknown:
            raise EvaluationInputError(
                f"group {name!r} must name evaluated policies ({sorted(policies)}), got {list(members)}"
            )


def responses_table(split: LabeledSplit, outputs: Sequence[PolicyOutputs]) -> pa.Table:
    """Every row: ``index``, ``context``, ``gold_response``, gold levels, then per policy ``<name>_response``,
    its predicted levels and the gold response's NLL sum and tokens under that policy."""
    columns: dict[str, Any] = {
        "index": np.arange(len(split), dtype=np.int64),
        "context": list(split.contexts),
        "gold_response": list(split.references),
        **{f"gold_{m.lower()}_level": v for m, v in split.gold_levels.items()},
    }
    for o in outputs:
        _check_aligned(o, split)
        columns[f"{o.name}_response"] = list(o.responses)
        for m, v in o.pred_levels.items():
            columns[f"{o.name}_{m.lower()}_level"] = v
        columns[f"{o.name}_gold_nll"] = o.nll_sums
        columns[f"{o.name}_gold_tokens"] = o.nll_tokens
    return pa.table(columns)


def _bleu_n(n: int) -> Callable[[IntArray, IntArray], float]:
    return lambda stats, idx: bleu_from_stats(stats[idx])[f"bleu{n}"]


def _all(o: PolicyOutputs) -> IntArray:
    return np.arange(len(o.responses), dtype=np.int64)


def _check_aligned(outputs: PolicyOutputs, split: LabeledSplit) -> None:
    if len(outputs.responses) != len(split):
        raise ValueError(
            f"policy {outputs.name!r} has {len(outputs.responses)} responses for {len(split)} rows of "
            f"split {split.name!r}; generate one response per row, in order"
        )
    if set(outputs.pred_levels) != set(split.gold_levels):
        raise ValueError(
            f"policy {outputs.name!r} has levels for {sorted(outputs.pred_levels)} but the split for "
            f"{sorted(split.gold_levels)}; score the same mechanisms"
        )
