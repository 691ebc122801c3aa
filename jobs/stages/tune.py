"""Tune stage: a Ray Tune sweep over PPO, one trial per sampled config, each in its own placement group.

A trial is ``cfg.with_overrides(trial config)``: it runs the PPO stage inside its reservation
(``Reservation.current(first=1)``), reports the PPO metrics with a dev Emp-F1 on a fixed slice every
``report_every`` iterations (with the latest PPO checkpoint, so a restarted trial resumes PPO from it),
and last the full evaluation (``eval/*``). The sweep writes ``trials.parquet``, ``report.md`` and the
best trial's policy and config (see :class:`~pipeline.layout.SweepDir`).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator

from actors.controller import Hook, IterationReport, PPOController
from actors.placement import Reservation, RoleBundle, check_cluster, ppo_bundles
from actors.sweep import (
    DevEvaluator,
    dev_slice,
    metric_row,
    param_space,
    plain_values,
    restore_checkpoint,
    trial_resources,
)
from actors.train_harness import replace_folder
from jobs.stages.evaluate import evaluate_stage, load_evaluation_inputs
from jobs.stages.ppo import load_ppo_inputs, ppo_stage
from jobs.stages.result import StageResult
from pipeline.config import Config, ConfigError, save_config
from pipeline.config.search_space import SearchSpace
from pipeline.evaluation.suite import read_labeled_split
from pipeline.evaluation.sweep_report import sweep_markdown
from pipeline.layout import PPODir, RunLayout, SweepDir

logger = logging.getLogger(__name__)

DEV_METRICS = ("dev/emp_f1", "dev/er_f1", "dev/ip_f1", "dev/ex_f1", "dev/perplexity", "dev/dist2")
"""Reported every ``report_every`` iterations (and last): what ASHA can compare trials on."""
PPO_PREFIXES = ("reward/", "rollout/", "ppo/", "perf/")
"""PPO metric rows, also in every report."""
TABLE_METRICS = (
    "eval/emp_f1", "eval/er_f1", "eval/ip_f1", "eval/ex_f1", "eval/perplexity", "eval/dist2",
    *DEV_METRICS, "rollout/kl", "rollout/kl_coef", "reward/score",
)  # fmt: skip


class SweepError(ConfigError):
    """A sweep setting is unusable (metric, scheduler, resources); the message names it and the fix."""


@dataclass(frozen=True)
class TrialSetup:
    """What every trial function receives besides its sampled config."""

    cfg: Config
    layout: RunLayout
    sweep: SweepDir
    report_every: int
    dev_examples: int
    split: str
    eval_examples: int | None
    hooks: tuple[Hook, ...] = ()
    """Passed to every trial's PPO stage (fault-injection and placement tests)."""


def check_metric(metric: str) -> None:
    """``metric`` must be in every report (ASHA compares trials mid-run), so not an ``eval/`` one."""
    if metric in DEV_METRICS or metric.startswith(PPO_PREFIXES):
        return
    if metric.startswith("eval/"):
        raise SweepError(
            f"--metric {metric}: the full evaluation is reported once, at the end, but the scheduler compares "
            f"trials every report. Fix: use {metric.replace('eval/', 'dev/')} (the same measure on a fixed "
            "dev slice, reported every time); the table still shows the eval/ columns."
        )
    raise SweepError(
        f"--metric {metric}: not reported by a trial. Fix: one of {list(DEV_METRICS)} or a PPO metric "
        f"({', '.join(p + '*' for p in PPO_PREFIXES)}, e.g. reward/score, rollout/kl)."
    )


def reports_per_trial(cfg: Config, report_every: int) -> int:
    """Reports of a full trial: every ``report_every`` iterations before the last, then the final one."""
    return (cfg.ppo.total_steps - 1) // report_every + 1


class TrialReporter:
    """The trial's PPO sink: every ``report_every`` iterations, the dev metric of the current policy and
    ``tune.report`` with the newest PPO checkpoint."""

    def __init__(self, setup: TrialSetup, cfg: Config, dev: DevEvaluator, dev_policy: Path) -> None:
        self.cfg, self.dev, self.dev_policy, self.every = cfg, dev, dev_policy, setup.report_every
        self.controller: PPOController | None = None
        self.pending: Path | None = None
        self.last: dict[str, float] = {}

    def hook(self, controller: PPOController, iteration: int, phase: str) -> None:
        """Remembers the controller, whose learner exports the current policy."""
        self.controller = controller

    def sink(self, report: IterationReport) -> None:
        """Reports at every ``report_every``-th iteration except the last (the trial reports that one)."""
        if report.checkpoint is not None:
            self.pending = report.checkpoint
        self.last = dict(report.metrics)
        if report.iteration % self.every or report.iteration >= self.cfg.ppo.total_steps:
            return
        assert self.controller is not None
        policy = self.controller.export_policy(self.dev_policy)
        self.report({**self.last, **self.dev(policy)})

    def report(self, metrics: dict[str, float]) -> None:
        """``tune.report`` with the PPO checkpoint written since the last report, if any."""
        checkpoint = tune.Checkpoint.from_directory(str(self.pending)) if self.pending is not None else None
        tune.report(metrics, checkpoint=checkpoint)
        self.pending = None


def run_trial(trial_config: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: PPO in the trial's reservation, periodic dev reports, the full evaluation last."""
    cfg = setup.cfg.with_overrides(plain_values(trial_config))
    trial = setup.sweep.trial(tune.get_context().get_trial_id())
    layout = setup.layout.moved(ppo=trial.ppo, evaluate=trial.evaluate)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restarted trial (or, later, a PBT exploit) resumes PPO from it
        with checkpoint.as_directory() as folder:
            restore_checkpoint(Path(folder), layout.ppo.checkpoints)
    else:  # a retried trial that never reported a checkpoint starts afresh
        shutil.rmtree(trial.path, ignore_errors=True)
    trial.path.mkdir(parents=True, exist_ok=True)
    split = read_labeled_split(layout.labeled.split(setup.split), name=setup.split)
    dev = DevEvaluator(cfg, dev_slice(split, setup.dev_examples, seed=cfg.run.seed), layout.identifiers.path)
    reporter = TrialReporter(setup, cfg, dev, trial.dev_policy)
    reservation = Reservation.current(first=1)
    ppo_stage(
        cfg,
        layout,
        resume=True,
        inputs=load_ppo_inputs(layout),
        sinks=[reporter.sink],
        hooks=[reporter.hook, *setup.hooks],
        reservation=reservation,
    )
    final = dev(layout.ppo.policy)
    inputs = load_evaluation_inputs(
        layout, policies=[("trial", layout.ppo.policy)], split=setup.split, max_examples=setup.eval_examples
    )
    evaluation: dict[str, Any] = {}
    evaluate_stage(cfg, layout, inputs, n_resamples=1, reservation=reservation, sinks=[evaluation.update])
    full = metric_row("eval", evaluation["policies"]["trial"])
    reporter.report({**reporter.last, **final, **full, "final": 1.0})


def make_scheduler(
    name: Literal["asha", "fifo"], *, max_t: int, grace_period: int, reduction_factor: float
) -> TrialScheduler:
    """ASHA over reports (``training_iteration``) or FIFO (every trial runs to the end)."""
    if name == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_t,
            grace_period=min(grace_period, max_t),
            reduction_factor=reduction_factor,
        )
    if name == "fifo":
        return FIFOScheduler()  # type: ignore[no-untyped-call]
    raise SweepError(f"--scheduler {name!r}: unknown. Fix: use asha or fifo.")


def tune_stage(
    cfg: Config,
    layout: RunLayout,
    space: SearchSpace,
    *,
    num_samples: int = 1,
    metric: str = "dev/emp_f1",
    mode: Literal["max", "min"] = "max",
    scheduler: Literal["asha", "fifo"] = "asha",
    max_concurrent_trials: int = 1,
    report_every: int = 1,
    grace_period: int = 1,
    reduction_factor: float = 2.0,
    dev_examples: int = 32,
    split: str = "valid",
    eval_examples: int | None = None,
    max_failures: int = 1,
    trial_cpus: float = 0.1,
    sweep_dir: Path | None = None,
    hooks: Sequence[Hook] = (),
) -> StageResult:
    """Sweep ``space`` over ``cfg`` with Ray Tune into ``layout.sweep(sweep_dir)``; Ray must be up.

    Each sample of ``space`` (``num_samples`` times the grid) is one PPO trial reading the run's SFT
    policy, identifiers and labelled train split; ``split`` gives the dev slice (``dev_examples``
    rows, seeded) and the final evaluation (``eval_examples`` rows, all by default). ``metric`` and
    ``mode`` drive the scheduler and pick the best trial among those that completed. ``hooks`` go to
    every trial's :func:`~jobs.stages.ppo.ppo_stage` (they travel pickled into the trials).
    """
    started = time.perf_counter()
    check_metric(metric)
    if report_every < 1 or num_samples < 1 or max_concurrent_trials < 1:
        raise SweepError(
            f"report_every={report_every}, num_samples={num_samples}, max_concurrent_trials="
            f"{max_concurrent_trials}: each must be >= 1. Fix: pass positive values."
        )
    probes = [c for _, c in space.probe_configs(cfg)]
    for probe in probes:
        bundles = [RoleBundle("sweep trial", 0, {"CPU": trial_cpus}), *ppo_bundles(probe)]
        check_cluster(
            "one sweep trial", bundles, fix="lower resources.*_cpus or the worker counts, or add nodes"
        )
    load_ppo_inputs(layout)  # before any trial: missing inputs fail once, here
    read_labeled_split(layout.labeled.split(split), name=split, max_examples=eval_examples)
    sweep = layout.sweep(sweep_dir)
    sweep.path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, sweep.config)
    sweep.space.write_text(
        yaml.safe_dump({d.key: {d.kind: list(d.args)} for d in space.dimensions}, sort_keys=False)
    )
    setup = TrialSetup(cfg, layout, sweep, report_every, dev_examples, split, eval_examples, tuple(hooks))
    max_t = max(reports_per_trial(p, report_every) for p in probes)
    trials = num_samples * space.grid_size
    logger.info(
        "sweep: %d trial(s) over %s, %s by %s (%s), up to %d at once, %d report(s) per trial",
        trials, ", ".join(space.keys), scheduler, metric, mode, max_concurrent_trials, max_t,
    )  # fmt: skip
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(run_trial, setup=setup), trial_resources(cfg, trial_cpus=trial_cpus)
        ),
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            scheduler=make_scheduler(
                scheduler, max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor
            ),
            num_samples=num_samples,
            # the same draws every time; Tune ignores TuneConfig.max_concurrent_trials next to a generator
            search_alg=BasicVariantGenerator(max_concurrent=max_concurrent_trials, random_state=cfg.run.seed),
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name="ppo",
            storage_path=str(sweep.tune.resolve()),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )
    grid = tuner.fit()
    rows = [_trial_row(grid[i], space, cfg) for i in range(len(grid))]
    pq.write_table(_table(rows, space), sweep.trials)
    completed = [r for r in rows if r["status"] == "completed" and _finite(r.get(metric))]
    best = None
    if completed:
        best = (max if mode == "max" else min)(completed, key=lambda r: float(r[metric]))
        _publish_best(best, space, cfg, sweep)
    repro = None
    if best is not None:  # the resolved config holds every setting: no overrides needed
        repro = f"emprl ppo --run-dir {layout.root} --preset {sweep.best_config} --out {sweep.best_ppo}"
    sweep.report_md.write_text(
        sweep_markdown(rows, keys=space.keys, metric=metric, mode=mode, best=best, command=repro)
    )
    errors = sum(r["status"] == "error" for r in rows)
    headline = f"{len(rows)} trial(s), {len(completed)} completed, {errors} failed"
    if best is not None:
        headline += (
            f"; best {best['trial_id']} {metric} {float(best[metric]):.3f} ("
            + ", ".join(f"{k}={best[k]}" for k in space.keys)
            + ")"
        )
    outputs = {"trials": sweep.trials, "report": sweep.report_md}
    if best is not None:
        outputs["best_policy"] = sweep.best_policy
    return StageResult(
        stage="tune",
        folder=sweep.path,
        metrics={
            "trials": len(rows),
            "completed": len(completed),
            "errors": errors,
            "metric": metric,
            "mode": mode,
            "best": dict(best) if best is not None else None,
        },
        headline=headline,
        outputs=outputs,
        seconds=time.perf_counter() - started,
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _trial_row(result: Any, space: SearchSpace, cfg: Config) -> dict[str, Any]:
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
        **{k: config.get(k) for k in space.keys},
    }
    for key in TABLE_METRICS:
        row[key] = float(metrics[key]) if _finite(metrics.get(key)) else math.nan
    row["iteration"] = int(metrics.get("iteration", 0))
    row["total_steps"] = cfg.with_overrides(config).ppo.total_steps if config else cfg.ppo.total_steps
    row["reports"] = int(metrics.get("training_iteration", 0))
    row["wall_s"] = float(metrics.get("time_total_s", math.nan))
    row["error"] = str(result.error).splitlines()[0][:500] if result.error is not None else ""
    return row


def _table(rows: list[dict[str, Any]], space: SearchSpace) -> pa.Table:
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


def _publish_best(best: dict[str, Any], space: SearchSpace, cfg: Config, sweep: SweepDir) -> None:
    source = PPODir(sweep.trial(str(best["trial_id"])).ppo).policy
    replace_folder(source, sweep.best_policy)
    save_config(cfg.with_overrides({k: best[k] for k in space.keys}), sweep.best_config)
    logger.info("best trial %s: policy copied to %s", best["trial_id"], sweep.best_policy)
