"""Tune stage: a Ray Tune sweep over PPO, one trial per sampled config, each in its own placement group.

A trial is ``cfg.with_overrides(trial config)``: it runs the PPO stage inside its reservation
(``Reservation.current(first=1)``), reports the PPO metrics with a dev Emp-F1 on a fixed slice every
``report_every`` iterations (with the latest PPO checkpoint, so a restarted, resumed or PBT-exploiting
trial continues PPO from it under its own, possibly mutated, config), and last the full evaluation
(``eval/*``). Trials are drawn by seeded random/grid sampling or Optuna (one objective or several), and
scheduled by ASHA, FIFO or Population Based Training. The sweep writes ``trials.parquet``,
``history.parquet``, ``report.md``/``report.html`` with the Pareto fronts and learning curves, and the
best feasible trial's policy and config (see :class:`~pipeline.layout.SweepDir`); ``resume=True``
continues a sweep whose driver died.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm, Searcher

from actors.cluster.placement import Reservation, RoleBundle, cluster_shortfall, ppo_bundles, total
from actors.ppo.controller import Hook, IterationReport, PPOController
from actors.sweep.trial import (
    DevEvaluator,
    dev_slice,
    metric_row,
    param_space,
    plain_values,
    restore_checkpoint,
    trial_resources,
    tune_domain,
)
from actors.training.harness import replace_folder
from jobs.stages.evaluate import evaluate_stage, load_evaluation_inputs
from jobs.stages.ppo import load_ppo_inputs, ppo_stage
from jobs.stages.result import StageResult
from pipeline.config import Config, ConfigError, save_config
from pipeline.config.objective import DEV_METRICS, Objective
from pipeline.config.search_space import SearchSpace
from pipeline.evaluation.suite import read_labeled_split
from pipeline.evaluation.sweep_report import write_sweep_report
from pipeline.layout import PPODir, RunLayout, SweepDir

logger = logging.getLogger(__name__)

TABLE_METRICS = (
    "eval/emp_f1", "eval/er_f1", "eval/ip_f1", "eval/ex_f1", "eval/perplexity", "eval/dist2",
    *DEV_METRICS, "rollout/kl", "rollout/kl_coef", "reward/score",
)  # fmt: skip


class SweepError(ConfigError):
    """A sweep setting is unusable (scheduler, search, resources, resume); the message names it and the fix."""


Scheduler = Literal["asha", "fifo", "pbt"]
Search = Literal["random", "optuna"]


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep runs (everything but the base config and the space); saved as ``settings.json`` so
    ``--resume`` continues with the same settings."""

    num_samples: int = 1
    """Samples of the space (times the grid)."""
    metric: str = "dev/emp_f1"
    mode: Literal["max", "min"] = "max"
    constraints: tuple[str, ...] = ()
    """``KEY<=X`` / ``KEY>=X``: the best trial must satisfy them (``eval/*`` allowed)."""
    penalty: float = 0.0
    """> 0: the scheduler and search rank on ``objective`` = metric worsened by penalty × violations."""
    objectives: tuple[str, ...] = ()
    """Extra ``METRIC:MODE`` objectives of a multi-objective Optuna search."""
    scheduler: Scheduler = "asha"
    search: Search = "random"
    max_concurrent_trials: int = 1
    report_every: int = 1
    """PPO iterations between reports (a report carries the dev metrics and a PPO checkpoint)."""
    grace_period: int = 1
    """ASHA: reports before a trial can be stopped."""
    reduction_factor: float = 2.0
    perturbation_interval: int = 1
    """PBT: reports between exploit/explore steps."""
    quantile_fraction: float = 0.25
    """PBT: the bottom fraction that copies the top fraction."""
    resample_probability: float = 0.25
    """PBT: chance a mutated value is drawn afresh instead of scaled by 0.8 / 1.2 (or moved to a
    neighbouring option)."""
    dev_examples: int = 32
    split: str = "valid"
    eval_examples: int | None = None
    max_failures: int = 1
    trial_cpus: float = 0.1

    @property
    def objective(self) -> Objective:
        """The parsed metric, mode, constraints and extra objectives."""
        return Objective.parse(
            self.metric, self.mode, constraints=self.constraints, penalty=self.penalty, also=self.objectives
        )

    def check(self, space: SearchSpace, probes: Sequence[Config]) -> Objective:
        """Everything that can be checked before Ray: counts, objective, scheduler/search combinations.

        Raises:
            SweepError: naming the setting and the fix.
            ObjectiveError: a metric or constraint no trial reports.
        """
        counts = {
            "report_every": self.report_every, "num_samples": self.num_samples,
            "max_concurrent_trials": self.max_concurrent_trials, "grace_period": self.grace_period,
            "perturbation_interval": self.perturbation_interval,
        }  # fmt: skip
        bad = {k: v for k, v in counts.items() if v < 1}
        if bad:
            raise SweepError(f"{bad}: each must be >= 1. Fix: pass positive values.")
        objective = self.objective
        if self.objectives and self.search != "optuna":
            raise SweepError(
                f"--objective {' '.join(self.objectives)}: a multi-objective search is Optuna's. Fix: add "
                "--search optuna, or drop --objective."
            )
        if self.search == "optuna":
            grids = [d.key for d in space.dimensions if d.kind == "grid"]
            if grids:
                raise SweepError(
                    f"--search optuna: {', '.join(grids)} is a grid, which Optuna cannot sample. Fix: write "
                    "{choice: [...]} instead of {grid: [...]}, or use --search random."
                )
            if self.scheduler == "pbt":
                raise SweepError(
                    "--scheduler pbt with --search optuna: PBT mutates the configs Optuna suggested, so "
                    "Optuna would learn from configs it never proposed. Fix: use one of them."
                )
        if self.scheduler == "pbt":
            for probe in probes:
                if self.report_every % probe.ppo.save_every:
                    raise SweepError(
                        f"--scheduler pbt exploits through the PPO checkpoint, so every report must carry "
                        f"one; ppo.save_every={probe.ppo.save_every} does not divide --report-every "
                        f"{self.report_every}. Fix: ppo.save_every=1 (or a divisor of --report-every)."
                    )
            shapes = {tuple(tuple(sorted(b.resources.items())) for b in ppo_bundles(p)) for p in probes}
            if len(shapes) > 1:
                raise SweepError(
                    "--scheduler pbt: the space changes the PPO roles' resources (e.g. a worker count or "
                    "resources.*), but an exploited trial keeps its reservation. Fix: sweep such keys with "
                    "asha or fifo, or fix them in the config."
                )
            if not 0 < self.quantile_fraction <= 0.5 or not 0 <= self.resample_probability <= 1:
                raise SweepError(
                    f"--quantile-fraction {self.quantile_fraction} must be in (0, 0.5] and "
                    f"--resample-probability {self.resample_probability} in [0, 1]."
                )
        return objective

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepSettings:
        """The settings a sweep saved; unknown keys are ignored, missing ones take the defaults."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known
        }
        return cls(**values)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial function receives besides its sampled config."""

    cfg: Config
    layout: RunLayout
    sweep: SweepDir
    settings: SweepSettings
    objective: Objective
    hooks: tuple[Hook, ...] = ()
    """Passed to every trial's PPO stage (fault-injection and placement tests)."""


def reports_per_trial(cfg: Config, report_every: int) -> int:
    """Reports of a full trial: every ``report_every`` iterations before the last, then the final one."""
    return (cfg.ppo.total_steps - 1) // report_every + 1


class TrialReporter:
    """The trial's PPO sink: every ``report_every`` iterations, the dev metric of the current policy and
    ``tune.report`` with the newest PPO checkpoint."""

    def __init__(self, setup: TrialSetup, cfg: Config, dev: DevEvaluator, dev_policy: Path) -> None:
        self.cfg, self.dev, self.dev_policy = cfg, dev, dev_policy
        self.every, self.objective = setup.settings.report_every, setup.objective
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
        """``tune.report`` (with the penalised objective, if any) and the PPO checkpoint written since the
        last report, if any."""
        checkpoint = tune.Checkpoint.from_directory(str(self.pending)) if self.pending is not None else None
        tune.report({**metrics, **self.objective.penalised(metrics)}, checkpoint=checkpoint)
        self.pending = None


def run_trial(trial_config: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: PPO in the trial's reservation, periodic dev reports, the full evaluation last."""
    settings = setup.settings
    cfg = setup.cfg.with_overrides(plain_values(trial_config))
    trial = setup.sweep.trial(tune.get_context().get_trial_id())
    layout = setup.layout.moved(ppo=trial.ppo, evaluate=trial.evaluate)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restarted or resumed trial, or a PBT exploit of another trial's state
        with checkpoint.as_directory() as folder:
            restore_checkpoint(Path(folder), layout.ppo.checkpoints)
    else:  # a retried trial that never reported a checkpoint starts afresh
        shutil.rmtree(trial.path, ignore_errors=True)
    trial.path.mkdir(parents=True, exist_ok=True)
    split = read_labeled_split(layout.labeled.split(settings.split), name=settings.split)
    dev = DevEvaluator(
        cfg, dev_slice(split, settings.dev_examples, seed=cfg.run.seed), layout.identifiers.path
    )
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
        layout,
        policies=[("trial", layout.ppo.policy)],
        split=settings.split,
        max_examples=settings.eval_examples,
    )
    evaluation: dict[str, Any] = {}
    evaluate_stage(cfg, layout, inputs, n_resamples=1, reservation=reservation, sinks=[evaluation.update])
    full = metric_row("eval", evaluation["policies"]["trial"])
    reporter.report({**reporter.last, **final, **full, "final": 1.0})


def make_scheduler(
    settings: SweepSettings, objective: Objective, space: SearchSpace, *, max_t: int, seed: int
) -> TrialScheduler:
    """ASHA over reports (``training_iteration``), FIFO (every trial runs to the end), or Population Based
    Training mutating every swept key (clamped back into the space, so a trial config stays valid)."""
    metric, mode = objective.ranked_metric, objective.mode
    if settings.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            max_t=max_t,
            grace_period=min(settings.grace_period, max_t),
            reduction_factor=settings.reduction_factor,
        )
    if settings.scheduler == "fifo":
        return FIFOScheduler()  # type: ignore[no-untyped-call]
    if settings.scheduler == "pbt":
        random.seed(seed)  # PBT draws its exploit partners and mutations from the global generator
        return FinalAwarePBT(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            perturbation_interval=settings.perturbation_interval,
            hyperparam_mutations=pbt_mutations(space),
            quantile_fraction=settings.quantile_fraction,
            resample_probability=settings.resample_probability,
            custom_explore_fn=space.clamp,
            synch=True,
        )
    raise SweepError(f"--scheduler {settings.scheduler!r}: unknown. Fix: use asha, fifo or pbt.")


class FinalAwarePBT(PopulationBasedTraining):
    """PBT that leaves a trial's last report alone: a trial's final report carries its full evaluation,
    and cloning another trial into it then would pair that evaluation with weights it never trained."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get("final"):
            return TrialScheduler.CONTINUE
        return str(super().on_trial_result(tune_controller, trial, result))


def make_search(settings: SweepSettings, objective: Objective, *, seed: int) -> Searcher | SearchAlgorithm:
    """Random/grid sampling (seeded), or Optuna's TPE (one objective, or several: a Pareto search)
    limited to ``max_concurrent_trials`` suggestions in flight."""
    if settings.search == "random":
        # the same draws every time; Tune ignores TuneConfig.max_concurrent_trials next to a generator
        return BasicVariantGenerator(max_concurrent=settings.max_concurrent_trials, random_state=seed)
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    multi = len(objective.metrics) > 1
    searcher = OptunaSearch(
        metric=objective.metrics if multi else objective.ranked_metric,
        mode=list(objective.modes) if multi else str(objective.mode),
        seed=seed,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=settings.max_concurrent_trials)


def tune_stage(
    cfg: Config,
    layout: RunLayout,
    space: SearchSpace,
    settings: SweepSettings = SweepSettings(),
    *,
    sweep_dir: Path | None = None,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
) -> StageResult:
    """Sweep ``space`` over ``cfg`` with Ray Tune into ``layout.sweep(sweep_dir)``; Ray must be up.

    Each sample of ``space`` (``settings.num_samples`` times the grid) is one PPO trial reading the run's
    SFT policy, identifiers and labelled train split; ``settings.split`` gives the dev slice and the final
    evaluation. The objective (metric, mode, constraints) drives the scheduler and picks the best trial
    among those that completed and satisfy the constraints. ``resume`` continues the sweep in the folder
    (Tune's restore: finished trials stay, unfinished ones go on from their last checkpoint). ``hooks`` go
    to every trial's :func:`~jobs.stages.ppo.ppo_stage` (they travel pickled into the trials).
    """
    started = time.perf_counter()
    probes = [c for _, c in space.probe_configs(cfg)]
    objective = settings.check(space, probes)
    fits = min(_trials_that_fit(probe, settings.trial_cpus) for probe in probes)
    if fits < settings.max_concurrent_trials:
        logger.warning(
            "only %d trial(s) fit in the cluster at once (--max-concurrent %d asks for more): the others wait",
            fits, settings.max_concurrent_trials,
        )  # fmt: skip
    load_ppo_inputs(layout)  # before any trial: missing inputs fail once, here
    read_labeled_split(
        layout.labeled.split(settings.split), name=settings.split, max_examples=settings.eval_examples
    )
    sweep = layout.sweep(sweep_dir)
    experiment = sweep.experiment
    if resume and not tune.Tuner.can_restore(str(experiment.resolve())):
        raise SweepError(
            f"--resume: no sweep to continue in {sweep.path} (no Tune experiment state under {experiment}). "
            "Fix: run the sweep without --resume first, or pass the folder it wrote (--out)."
        )
    if not resume and experiment.exists():
        raise SweepError(
            f"{sweep.path} already holds a sweep. Fix: continue it with --resume, or write this one "
            "elsewhere with --out (or delete the folder)."
        )
    sweep.path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, sweep.config)
    sweep.space.write_text(
        yaml.safe_dump({d.key: {d.kind: list(d.args)} for d in space.dimensions}, sort_keys=False)
    )
    sweep.settings.write_text(json.dumps(settings.to_json(), indent=2) + "\n")
    setup = TrialSetup(cfg, layout, sweep, settings, objective, tuple(hooks))
    max_t = max(reports_per_trial(p, settings.report_every) for p in probes)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup), trial_resources(cfg, trial_cpus=settings.trial_cpus)
    )
    # the experiment state (which trials finished, each one's newest checkpoint) is what --resume reads:
    # save it every few seconds rather than Tune's default of at least 10
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "3")
    if resume:
        logger.info("sweep: resuming %s (finished trials stay, unfinished ones continue)", experiment)
        tuner = tune.Tuner.restore(
            str(experiment.resolve()),
            trainable=trainable,
            resume_unfinished=True,
            param_space=param_space(space),
        )
    else:
        logger.info(
            "sweep: %s trial(s) over %s; %s, %s search; objective %s; up to %d at once, %d report(s) per trial",
            "?" if settings.search == "optuna" else settings.num_samples * space.grid_size,
            ", ".join(space.keys), settings.scheduler, settings.search, objective.describe(),
            settings.max_concurrent_trials, max_t,
        )  # fmt: skip
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(space),
            tune_config=tune.TuneConfig(
                scheduler=make_scheduler(settings, objective, space, max_t=max_t, seed=cfg.run.seed),
                num_samples=settings.num_samples,
                search_alg=make_search(settings, objective, seed=cfg.run.seed),
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=experiment.name,
                storage_path=str(sweep.tune.resolve()),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                # PBT clones other trials' checkpoints: keep enough that a donor's is still there
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if settings.scheduler == "pbt" else 2),
                verbose=0,
            ),
        )
    grid = tuner.fit()
    results = [grid[i] for i in range(len(grid))]
    rows = [_trial_row(r, space, cfg, objective) for r in results]
    pq.write_table(_table(rows, space), sweep.trials)
    history = _history(results)
    pq.write_table(pa.Table.from_pylist(history) if history else pa.table({}), sweep.history)
    completed = [r for r in rows if r["status"] == "completed"]
    best = objective.best(rows)
    repro = None
    if best is not None:
        _publish_best(best, space, cfg, sweep)
        # the resolved config holds every setting: no overrides needed
        repro = f"emprl ppo --run-dir {layout.root} --preset {sweep.best_config} --out {sweep.best_ppo}"
    files = write_sweep_report(
        rows,
        history,
        keys=space.keys,
        metric=objective.metric,
        mode=objective.mode,
        best=best,
        command=repro,
        sweep=sweep,
        constraints=[str(c) for c in objective.constraints],
    )
    errors = sum(r["status"] == "error" for r in rows)
    headline = f"{len(rows)} trial(s), {len(completed)} completed, {errors} failed"
    if best is not None:
        headline += (
            f"; best {best['trial_id']} {objective.metric} {float(best[objective.metric]):.3f} ("
            + ", ".join(f"{k}={_shown(best[k])}" for k in space.keys)
            + ")"
        )
    elif completed and objective.constraints:
        headline += "; no completed trial satisfies " + ", ".join(str(c) for c in objective.constraints)
    outputs = {"trials": sweep.trials, "history": sweep.history, **files}
    if best is not None:
        outputs["best_policy"] = sweep.best_policy
    return StageResult(
        stage="tune",
        folder=sweep.path,
        metrics={
            "trials": len(rows),
            "completed": len(completed),
            "errors": errors,
            "metric": objective.metric,
            "mode": objective.mode,
            "best": dict(best) if best is not None else None,
        },
        headline=headline,
        outputs=outputs,
        seconds=time.perf_counter() - started,
    )


def pbt_mutations(space: SearchSpace) -> dict[str, Any]:
    """PBT's mutation per swept key: a range's Tune domain (scaled by 0.8 / 1.2, or resampled), the
    option list of a choice or grid (a neighbour, or resampled)."""
    return {d.key: list(d.args) if d.kind in ("choice", "grid") else tune_domain(d) for d in space.dimensions}


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


def _trials_that_fit(cfg: Config, trial_cpus: float) -> int:
    """How many trials of ``cfg`` the cluster holds at once (0 when none does now but
    ``resources.scale_up_wait_s`` lets them wait for an autoscaler).

    Raises:
        SweepError: not even one fits, with requested vs available.
    """
    bundles = [RoleBundle("sweep trial", 0, {"CPU": trial_cpus}), *ppo_bundles(cfg)]
    shortfall = cluster_shortfall("one sweep trial", bundles)
    if shortfall is not None:
        if cfg.resources.scale_up_wait_s > 0:
            # an autoscaling cluster grows for the trials' pending placement groups
            logger.warning("%s; the trials wait for the autoscaler to add nodes", shortfall)
            return 0
        raise SweepError(
            f"no trial fits the cluster (0 at once): {shortfall}. Fix: lower resources.*_cpus or the worker "
            "counts, or add nodes."
        )
    have: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    need = {k: v for k, v in total(bundles).items() if v > 0}
    return int(min(math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in need.items()))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _count(value: Any) -> int:
    """An integer column of Tune's progress table (NaN where a report lacked it) as an int, 0 if absent."""
    return int(value) if _finite(value) else 0


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _trial_row(result: Any, space: SearchSpace, cfg: Config, objective: Objective) -> dict[str, Any]:
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
    extra = [c.key for c in objective.constraints] + [objective.ranked_metric]  # shown and judged too
    for key in [*TABLE_METRICS, *(k for k in dict.fromkeys(extra) if k not in TABLE_METRICS)]:
        row[key] = float(metrics[key]) if _finite(metrics.get(key)) else math.nan
    row["iteration"] = int(metrics.get("iteration", 0))
    row["total_steps"] = cfg.with_overrides(config).ppo.total_steps if config else cfg.ppo.total_steps
    row["reports"] = int(metrics.get("training_iteration", 0))
    row["wall_s"] = float(metrics.get("time_total_s", math.nan))
    row["feasible"] = objective.feasible(row)
    row["error"] = str(result.error).splitlines()[0][:500] if result.error is not None else ""
    return row


HISTORY_METRICS = ("dev/emp_f1", "dev/perplexity", "rollout/kl", "rollout/kl_coef", "reward/score")
"""Per-report columns of ``history.parquet`` (the learning curves)."""


def _history(results: Sequence[Any]) -> list[dict[str, Any]]:
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


def _publish_best(best: Mapping[str, Any], space: SearchSpace, cfg: Config, sweep: SweepDir) -> None:
    source = PPODir(sweep.trial(str(best["trial_id"])).ppo).policy
    replace_folder(source, sweep.best_policy)
    save_config(cfg.with_overrides({k: best[k] for k in space.keys}), sweep.best_config)
    logger.info("best trial %s: policy copied to %s", best["trial_id"], sweep.best_policy)
