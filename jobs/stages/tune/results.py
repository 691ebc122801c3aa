"""What a finished sweep leaves behind: ``trials.parquet`` (one row per trial), ``history.parquet`` (every
report, the learning curves), ``report.md``/``report.html`` with the Pareto fronts, and the best feasible
trial's policy and config (see :class:`~pipeline.layout.SweepDir`). The driver writes them and publishes each
one (a sweep folder that mirrors a URI gets them in the bucket); what trials wrote on other nodes (the best
policy, Tune's error files) is fetched first."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actors.sweep.trial import is_control, plain_values
from actors.training.harness import replace_folder
from jobs.stages.result import StageResult
from jobs.stages.tune.confirm import Confirmation, confirm_sweep
from jobs.stages.tune.settings import SweepError
from jobs.stages.tune.trial import TrialSetup, search_rows
from pipeline.config import Config, save_config
from pipeline.config.objective import DEV_METRICS, Objective
from pipeline.config.search_space import SEED_KEY, SearchSpace
from pipeline.evaluation.control import with_control_deltas
from pipeline.evaluation.sweep_report import SweepSummary, write_sweep_report
from pipeline.layout import PPODir, SweepDir
from pipeline.storage import display, fetch, publish, read_text, uri_of

logger = logging.getLogger(__name__)

TABLE_METRICS = (
    "eval/emp_f1", "eval/emp_f1_se", "eval/er_f1", "eval/ip_f1", "eval/ex_f1", "eval/perplexity", "eval/dist2",
    *DEV_METRICS, "dev/emp_f1_se", "rollout/kl", "rollout/kl_k3", "rollout/kl_coef", "reward/score",
)  # fmt: skip
"""Metric columns of ``trials.parquet`` (besides the objective's and the constraints' keys)."""

HISTORY_METRICS = (
    "dev/emp_f1",
    "dev/emp_f1_se",
    "dev/perplexity",
    "rollout/kl",
    "rollout/kl_k3",
    "rollout/kl_coef",
    "reward/score",
)
"""Per-report columns of ``history.parquet`` (the learning curves)."""


def record_sweep(
    results: Sequence[Any],
    setup: TrialSetup,
    space: SearchSpace,
    started: float,
    failure_counts: Mapping[str, int] | None = None,
) -> StageResult:
    """Writes the tables, the report and the best trial's policy and config of Tune's ``results``
    (``failure_counts``: Tune's count of each trial's failures, by trial id).

    Raises:
        SweepError: after writing them, when the objective has no best trial (no trial completed, or
            none that completed satisfies the constraints): the sweep failed.
    """
    cfg, objective, sweep = setup.cfg, setup.objective, setup.sweep
    rows = with_control_deltas([trial_row(r, space, cfg, objective, failure_counts or {}) for r in results])
    pq.write_table(trials_table(rows, space), sweep.trials)
    publish(sweep.trials)
    history = history_rows(results)
    pq.write_table(pa.Table.from_pylist(history) if history else pa.table({}), sweep.history)
    publish(sweep.history)
    completed = [r for r in rows if r["status"] == "completed"]
    search_best = best = objective.best(rows)
    searched = time.perf_counter() - started
    confirmation = run_confirmation(rows, setup, space.keys)
    if confirmation is not None:  # the confirmed choice (or the control) replaces the search's best
        confirmed = {
            trial: {k: v for k, v in c.items() if k.startswith("confirm/")}
            for c in confirmation.rows
            for trial in c["trials"]
        }
        rows = [{**r, **confirmed.get(str(r["trial_id"]), {})} for r in rows]
        pq.write_table(trials_table(rows, space), sweep.trials)
        publish(sweep.trials)
        best = next(r for r in rows if str(r["trial_id"]) == confirmation.best_id)
    constraints = [str(c) for c in objective.constraints]
    repro = None
    if best is not None:
        publish_best(best, space, cfg, sweep)
        # the resolved config holds every setting: no overrides needed
        repro = (
            f"emprl ppo --run-dir {display(setup.layout.root)} --preset {display(sweep.best_config)} "
            f"--out {display(sweep.best_ppo)}"
        )
    confirmed_as = None
    if confirmation is not None:
        confirmed_as = {
            **asdict(confirmation),
            "n_resamples": setup.settings.confirm_resamples,
            "folder": display(confirmation.folder),
        }
    pilot = read_text(sweep.dev_pilot)
    # ASHA's comparisons, appended by the scheduler in this (driver) process
    local = sweep.asha.read_text() if sweep.asha.is_file() else ""
    asha = [json.loads(line) for line in local.splitlines() if line.strip()]
    if asha:
        publish(sweep.asha)
    summary = SweepSummary(
        space.keys, objective.metric, objective.mode, best, repro, constraints=constraints,
        confirmation=confirmed_as, dev_pilot=json.loads(pilot) if pilot else None,
        dev_examples=setup.settings.dev_examples, asha=asha, scheduling=setup.settings.asha_rule,
    )  # fmt: skip
    files = write_sweep_report(rows, history, summary, sweep)  # publishes
    failures = failed_trials(results, sweep)  # a row's status is "error" exactly when its result has an error
    errors = len(failures)
    headline = f"{len(rows)} trial(s), {len(completed)} completed, {errors} failed"
    if best is None:
        raise SweepError(no_best_message(headline, failures, constraints if completed else [], sweep))
    headline += (
        f"; best {best['trial_id']} {objective.metric} {float(best[objective.metric]):.3f} ("
        + ", ".join(f"{k}={_shown(best[k])}" for k in space.keys)
        + ")"
    )
    control = next((r for r in rows if r["control"]), None)
    if confirmation is not None:
        headline += (
            f"; confirmed on {confirmation.n_examples} held-out examples: "
            + (f"{best['trial_id']} beats the control" if confirmation.passed else "none beat the control")
            + f" (search {searched:.0f} s, confirmation {confirmation.seconds:.0f} s)"
        )
    elif control is not None and control["trial_id"] != best["trial_id"]:
        headline += (
            f"; {best.get('vs_control/emp_f1', math.nan):+.2f} Emp-F1 vs the control {control['trial_id']}"
        )
    elif control is not None:
        headline += " (the control: no configuration beat it)"
    if failures:
        shown = ", ".join(display(f) for f, _ in failures[:3]) + (" ..." if len(failures) > 3 else "")
        headline += f"; errors of the failed trials: {shown}"
        logger.warning(
            "%d trial(s) failed; first error: %s (%s)", len(failures), failures[0][1], display(failures[0][0])
        )
    outputs = {"trials": sweep.trials, "history": sweep.history, **files, "best_policy": sweep.best_policy}
    return StageResult(
        stage="tune",
        folder=sweep.path,
        metrics={
            "trials": len(rows),
            "completed": len(completed),
            "errors": errors,
            "metric": objective.metric,
            "mode": objective.mode,
            "best": dict(best),
            "search_best": None if search_best is None else dict(search_best),
            "confirmation": confirmed_as,
            "search_s": searched,
            "control": None if control is None else dict(control),
        },
        headline=headline,
        outputs=outputs,
        seconds=time.perf_counter() - started,
    )


def run_confirmation(
    rows: Sequence[Mapping[str, Any]], setup: TrialSetup, keys: Sequence[str]
) -> Confirmation | None:
    """The confirmation of a sweep with a control and held-out rows (:func:`confirm_sweep`), else ``None``."""
    settings = setup.settings
    if not settings.held_out:
        return None
    _, held = search_rows(setup.layout, settings, setup.cfg.run.seed)
    return None if held is None else confirm_sweep(rows, setup, held, keys)


def failed_trials(results: Sequence[Any], sweep: SweepDir | None = None) -> list[tuple[Path, str]]:
    """The error file and the error (``module.Type: message``, the root cause) of every failed trial.

    With a ``sweep`` folder that mirrors a URI, Tune keeps the error files in the bucket: each is fetched
    into the sweep's mirror of Tune's experiment folder and named there."""
    remote = sweep is not None and uri_of(sweep.path) is not None
    failed = []
    for result in results:
        if result.error is None:
            continue
        if remote:
            assert sweep is not None
            error_file = fetch(sweep.experiment / Path(result.path).name / "error.txt")
        else:
            error_file = Path(result.path) / "error.txt"
        text = (
            error_file.read_text()
            if error_file.is_file()
            else f"{type(result.error).__name__}: {result.error}"
        )
        failed.append((error_file, root_cause(text)))
    return failed


def root_cause(traceback_text: str) -> str:
    """The last ``Type: message`` line of a (possibly chained, possibly remote) traceback, or its last line."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        head = lines[i].split(":", 1)[0]
        if head.replace(".", "").replace("_", "").isalnum() and head.endswith(
            ("Error", "Exception", "Interrupt")
        ):
            return " ".join(line.strip() for line in lines[i:])[:1000]
    return lines[-1][:1000] if lines else "(no error text)"


def no_best_message(
    headline: str, failures: list[tuple[Path, str]], constraints: list[str], sweep: SweepDir
) -> str:
    """Why a sweep has no best trial, with the first trial's error and where every error file is."""
    if constraints:
        reason = (
            "no completed trial satisfies "
            + ", ".join(constraints)
            + "; loosen --constraint or widen the space"
        )
    elif failures:
        error_file, cause = failures[0]
        reason = f"no trial completed. First trial's error: {cause} (full traceback: {display(error_file)})"
        if len(failures) > 1:
            reason += f"; {len(failures) - 1} more error file(s) under {display(sweep.path)}"
    else:
        reason = (
            "no trial completed (all were stopped early); give the trials more iterations or --num-samples"
        )
    return f"{headline}: {reason}. Tables and report: {display(sweep.path)}"


def trial_row(
    result: Any, space: SearchSpace, cfg: Config, objective: Objective, failure_counts: Mapping[str, int]
) -> dict[str, Any]:
    """One trial's row of ``trials.parquet``: status, swept values, last metrics, feasibility, error."""
    metrics: dict[str, Any] = dict(result.metrics or {})
    config = plain_values(result.config or {})
    if result.error is not None:
        status = "error"
    elif metrics.get("final"):
        status = "completed"
    else:
        status = "stopped"
    row: dict[str, Any] = {
        "trial_id": str(metrics.get("trial_id") or Path(result.path).name),
        "status": status,
        "control": is_control(result.config),
        **{k: config.get(k) for k in space.keys},
        SEED_KEY: int(config.get(SEED_KEY, cfg.run.seed)),
    }
    extra = [c.key for c in objective.constraints] + [objective.ranked_metric]  # shown and judged too
    for key in [*TABLE_METRICS, *(k for k in dict.fromkeys(extra) if k not in TABLE_METRICS)]:
        row[key] = float(metrics[key]) if _finite(metrics.get(key)) else math.nan
    row["iteration"] = int(metrics.get("iteration", 0))
    row["total_steps"] = cfg.with_overrides(config).ppo.total_steps if config else cfg.ppo.total_steps
    row["reports"] = int(metrics.get("training_iteration", 0))
    row["wall_s"] = float(metrics.get("time_total_s", math.nan))
    # every start (a restart after a failure, PBT's pauses and exploits, a resumed sweep), the exploits
    # among them, and Tune's count of the trial's failures (a crash, a lost node), each a restart
    row["starts"] = int(metrics.get("trial/starts", 1))
    row["exploits"] = int(metrics.get("trial/exploits", 0))
    row["failures"] = int(failure_counts.get(row["trial_id"], 0))
    row["feasible"] = objective.feasible(row)
    row["error"] = str(result.error).splitlines()[0][:500] if result.error is not None else ""
    return row


def history_rows(results: Sequence[Any]) -> list[dict[str, Any]]:
    """Every report of every trial (Tune's ``progress.csv``), in report order per trial."""
    rows: list[dict[str, Any]] = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or frame.empty:
            continue
        trial_id = str(Path(result.path).name)
        for record in frame.to_dict("records"):
            row: dict[str, Any] = {
                "trial_id": trial_id,
                "training_iteration": _count(record.get("training_iteration")),
                "iteration": _count(record.get("iteration")),
            }
            for key in HISTORY_METRICS:
                value = record.get(key)
                row[key] = float(value) if _finite(value) else math.nan
            rows.append(row)
    return rows


def trials_table(rows: list[dict[str, Any]], space: SearchSpace) -> pa.Table:
    """The trial rows as one table; a swept column of mixed types (e.g. 1 and 0.5) becomes strings."""
    columns: dict[str, list[Any]] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    for key in columns:
        values = [row.get(key) for row in rows]
        if key in space.keys:  # a choice may mix types (e.g. 1 and 0.5): keep the column one type
            kinds = {type(v) for v in values if v is not None}
            if len(kinds) > 1:
                values = [str(v) for v in values]
        columns[key] = values
    return pa.table(columns)


def publish_best(best: Mapping[str, Any], space: SearchSpace, cfg: Config, sweep: SweepDir) -> None:
    """Copies the best trial's policy to ``sweep.best_policy`` and writes its resolved config (both
    published; the trial's policy, written on whichever node ran it, is fetched first)."""
    source = fetch(PPODir(sweep.trial(str(best["trial_id"])).ppo).policy)
    replace_folder(source, sweep.best_policy)
    publish(sweep.best_policy)
    save_config(cfg.with_overrides({k: best[k] for k in space.keys}), sweep.best_config)
    logger.info("best trial %s: policy copied to %s", best["trial_id"], display(sweep.best_policy))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _count(value: Any) -> int:
    """An integer column of Tune's progress table (NaN where a report lacked it) as an int, 0 if absent."""
    return int(value) if _finite(value) else 0


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
