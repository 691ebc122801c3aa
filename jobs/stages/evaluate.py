"""Evaluate stage: responses of one or more policies on a labelled ED split, Emp-F1 and the paper's metrics.

Any folder may mirror a URI (a run in a bucket): what the stage reads is fetched onto this node first
(the labelled split, the policies, the identifiers) and what it writes is published (``config.yaml``,
``responses.parquet``, ``metrics.json``, the report and its figures), by the process that runs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from actors.cluster.placement import Reservation
from actors.inference.evaluator import EvaluationWorker, PolicySource, evaluate_policies
from actors.inference.scorer import IdentifierScorerWorker
from jobs.stages.result import StageResult, write_json
from pipeline import storage
from pipeline.config import Config, save_config
from pipeline.evaluation.report import build_report
from pipeline.evaluation.suite import (
    EvaluationInputError,
    LabeledSplit,
    evaluate,
    read_labeled_split,
    responses_table,
)
from pipeline.layout import RunLayout
from pipeline.models import ModelSourceError, load_policy
from pipeline.scoring import fetch_identifiers, identifier_folders

logger = logging.getLogger(__name__)

EvaluationSink = Callable[[dict[str, Any]], None]
"""Receives the evaluation's metrics (everything ``metrics.json`` holds) once they are computed."""


@dataclass(frozen=True)
class EvaluationInputs:
    """What the evaluate stage reads, checked: the labelled split, the policies and the identifiers."""

    split: LabeledSplit
    policies: list[PolicySource]
    identifiers: Path


def resolve_policies(layout: RunLayout, given: Sequence[tuple[str, Path]]) -> list[PolicySource]:
    """``given``, or the run's SFT and PPO policies that exist; each checked to load.

    Raises:
        EvaluationInputError: no policy, a repeated name, or a folder that does not load.
    """
    if given:
        policies = [PolicySource(name, folder) for name, folder in given]
    else:
        defaults = [("sft", layout.sft.policy), ("ppo", layout.ppo.policy)]
        # a policy in a bucket is fetched here: it is loaded below anyway
        policies = [PolicySource(n, f) for n, f in defaults if (storage.fetch(f) / "config.json").is_file()]
        if not policies:
            root, sft, ppo = (storage.display(p) for p in (layout.root, layout.sft.policy, layout.ppo.policy))
            raise EvaluationInputError(
                f"{root} has no SFT or PPO policy to evaluate ({sft}, {ppo}). Fix: run "
                f"`emprl sft --run-dir {root}` (and `emprl ppo`) first, or pass --policy NAME=FOLDER."
            )
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise EvaluationInputError(f"--policy names must be unique, got {names}. Fix: rename one.")
    for p in policies:
        try:
            load_policy(p.folder)
        except (ModelSourceError, ValueError, OSError) as exc:
            raise EvaluationInputError(
                f"policy {p.name!r} at {storage.display(p.folder)} does not load: {exc} Fix: pass a folder "
                "written by the SFT or PPO stage (save_policy), e.g. <run>/sft/policy."
            ) from exc
    return policies


def check_identifiers(folder: Path) -> Path:
    """``folder`` when it holds the ER/IP/EX identifiers (fetched onto this node when it mirrors a URI),
    else :class:`EvaluationInputError`."""
    try:
        identifier_folders(fetch_identifiers(folder))
    except ModelSourceError as exc:
        raise EvaluationInputError(f"{exc} Or pass --identifiers <folder>.") from exc
    return folder


def load_evaluation_inputs(
    layout: RunLayout,
    *,
    policies: Sequence[tuple[str, Path]] = (),
    split: str = "valid",
    identifiers: Path | None = None,
    max_examples: int | None = None,
    data: LabeledSplit | None = None,
) -> EvaluationInputs:
    """The labelled ``split`` of the run (or ``data``, rows of it already read; its first ``max_examples``),
    the policies (default: the run's SFT and PPO policies) and the identifiers (default: the run's), each
    checked before any work starts.

    Raises:
        EvaluationInputError: an input is missing or unusable; the message names it and the fix.
    """
    if data is None:
        data = read_labeled_split(
            storage.fetch(layout.labeled.split(split)), name=split, max_examples=max_examples
        )
    elif max_examples is not None:
        data = data.subset(range(min(max_examples, len(data))), data.name)
    return EvaluationInputs(
        split=data,
        policies=resolve_policies(layout, policies),
        identifiers=check_identifiers(identifiers or layout.identifiers.path),
    )


def evaluate_stage(
    cfg: Config,
    layout: RunLayout,
    inputs: EvaluationInputs | None = None,
    *,
    decoding: Literal["sample", "greedy"] = "sample",
    num_workers: int | None = None,
    n_resamples: int = 1000,
    num_samples: int = 10,
    sinks: Sequence[EvaluationSink] = (),
    reservation: Reservation | None = None,
    groups: Sequence[tuple[str, Sequence[str]]] | None = None,
    local: tuple[EvaluationWorker, IdentifierScorerWorker] | None = None,
) -> StageResult:
    """Evaluate ``inputs`` (default: :func:`load_evaluation_inputs` of the run) into ``layout.evaluate``:
    metrics, every response and the report. The metrics go to each of ``sinks``; the workers are placed
    in ``reservation`` when given (see :func:`~actors.cluster.placement.evaluation_bundles`); ``groups``
    compares configurations over their seeds instead of single policies
    (:func:`~pipeline.evaluation.suite.evaluate`); ``local`` instances in this process replace the actors
    (see :func:`~actors.inference.evaluator.evaluate_policies`)."""
    started = time.perf_counter()
    inputs = inputs or load_evaluation_inputs(layout)
    data, sources, identifiers, split = inputs.split, inputs.policies, inputs.identifiers, inputs.split.name
    out = layout.evaluate
    out.path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out.config)
    logger.info(
        "evaluating %s on %d %s examples (%s decoding)",
        ", ".join(p.name for p in sources), len(data), split, decoding,
    )  # fmt: skip
    outputs, stats = evaluate_policies(
        cfg,
        data,
        sources,
        identifiers,
        greedy=decoding == "greedy",
        num_workers=num_workers,
        reservation=reservation,
        local=local,
    )
    table = responses_table(data, outputs)
    pq.write_table(table, out.responses)
    storage.publish(out.responses)
    t0 = time.perf_counter()
    metrics = evaluate(data, outputs, n_resamples=n_resamples, seed=cfg.run.seed, groups=groups)
    stats["time/metrics"] = time.perf_counter() - t0
    r = cfg.rollout
    metrics["decoding"] = (
        {"mode": "greedy"}
        if decoding == "greedy"
        else {"mode": "sample", "top_k": r.top_k, "top_p": r.top_p, "temperature": r.temperature}
    )
    metrics["decoding"].update(
        min_new_tokens=r.min_new_tokens, max_new_tokens=r.max_new_tokens, seed=cfg.run.seed
    )
    metrics["identifiers"] = storage.display(identifiers)
    write_json(out.metrics, metrics)  # before the report: a failing figure loses no numbers
    t0 = time.perf_counter()
    files = build_report(metrics, out, examples=table.slice(0, num_samples).to_pylist(), run=layout)
    stats["time/report"] = time.perf_counter() - t0
    stats["time/total"] = time.perf_counter() - started
    metrics["stats"] = stats
    write_json(out.metrics, metrics)
    for sink in sinks:
        sink(metrics)
    lines = []
    for name, p in metrics["policies"].items():
        logger.info(
            "%s: Emp-F1 %.2f, perplexity %.2f, Dist-2 %.4f, BLEU-4 %.2f, ROUGE-L %.2f",
            name, p["emp_f1"], p["perplexity"], p["dist2"], p["bleu4"], p["rouge_l"],
        )  # fmt: skip
        lines.append(f"{name} Emp-F1 {p['emp_f1']:.2f} ppl {p['perplexity']:.1f}")
    summary = {
        "split": split,
        "n_examples": len(data),
        "emp_f1": {n: p["emp_f1"] for n, p in metrics["policies"].items()},
        "perplexity": {n: p["perplexity"] for n, p in metrics["policies"].items()},
    }
    return StageResult(
        stage="evaluate",
        folder=out.path,
        metrics=summary,
        headline=f"{len(data)} {split} examples: " + "; ".join(lines),
        outputs={"report": files.html, "metrics": out.metrics},
        seconds=time.perf_counter() - started,
    )
