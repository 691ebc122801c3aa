"""The tune stage driver: :func:`tune_stage` checks the settings and the cluster before Ray Tune starts,
writes the sweep's config, space and settings, runs (or resumes) the Tuner with one placement group per
trial, and hands Tune's results to :func:`~jobs.stages.tune.results.record_sweep`. A sweep folder that
mirrors a URI keeps Tune's experiment state and trial checkpoints in the bucket (Tune's own
``storage_filesystem``) and the driver publishes every file it writes, so ``--resume`` works from any node."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import yaml
from ray import tune

from actors.cluster.placement import RoleBundle, cluster_shortfall, ppo_bundles, total
from actors.ppo.controller import Hook
from actors.sweep.trial import param_space, trial_resources
from jobs.stages.ppo import load_ppo_inputs
from jobs.stages.result import StageResult
from jobs.stages.tune.pilot import pilot_dev_examples
from jobs.stages.tune.results import record_sweep
from jobs.stages.tune.search import derive_asha, make_scheduler, make_search, num_samples
from jobs.stages.tune.settings import SweepError, SweepSettings
from jobs.stages.tune.trial import TrialSetup, reports_per_trial, run_trial, search_rows
from pipeline.config import Config, save_config
from pipeline.config.search_space import SearchSpace
from pipeline.layout import RunLayout, SweepDir
from pipeline.storage import display, list_names, publish, ray_storage, uri_of

if TYPE_CHECKING:
    import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS = SweepSettings()


def tune_stage(
    cfg: Config,
    layout: RunLayout,
    space: SearchSpace,
    settings: SweepSettings = DEFAULT_SETTINGS,
    *,
    sweep_dir: Path | None = None,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
) -> StageResult:
    """Sweep ``space`` over ``cfg`` with Ray Tune into ``layout.sweep(sweep_dir)``; Ray must be up.

    Each sample of ``space`` (``settings.num_samples`` times the grid), and the control (``cfg``'s own values
    of the swept keys; ``settings.control``), is one PPO trial reading the run's
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
    if settings.max_concurrent_trials == 0:  # as many as fit now (saved: a resume keeps the count)
        settings = replace(settings, max_concurrent_trials=max(1, fits))
        logger.info("sweep: %d trial(s) at once: as many as fit the cluster", settings.max_concurrent_trials)
    elif fits < settings.max_concurrent_trials:
        logger.warning(
            "only %d trial(s) fit in the cluster at once (--max-concurrent %d asks for more): the others wait",
            fits, settings.max_concurrent_trials,
        )  # fmt: skip
    load_ppo_inputs(layout)  # before any trial: missing inputs fail once, here
    search, _ = search_rows(layout, settings, cfg.run.seed)  # a missing or bad split fails here, once
    sweep = layout.sweep(sweep_dir)
    _prepare_folder(sweep, cfg, space, settings, resume=resume)
    max_t = max(reports_per_trial(p, settings.report_every) for p in probes)
    if not resume:  # the dev slice sized by a pilot, ASHA by the noise: settings.json keeps both
        pair_se = None
        if settings.dev_examples == 0:
            pilot = pilot_dev_examples(cfg, layout, search, settings.dev_se, sweep)
            settings = replace(settings, dev_examples=pilot.chosen)
            pair_se = pilot.pair_se
        trials = num_samples(settings, control=settings.control) * space.grid_size * settings.seeds
        settings = derive_asha(settings, max_t=max_t, trials=trials, pair_se=pair_se)
        if settings.asha_rule:
            logger.info("sweep: %s", settings.asha_rule)
        _write_settings(sweep, settings)
    setup = TrialSetup(cfg, layout, sweep, settings, objective, tuple(hooks))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup), trial_resources(cfg, trial_cpus=settings.trial_cpus)
    )
    # the experiment state (which trials finished, each one's newest checkpoint) is what --resume reads:
    # save it every few seconds rather than Tune's default of at least 10
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "3")
    experiment = sweep.experiment
    storage_path, storage_filesystem = tune_storage(sweep)
    if resume:
        logger.info(
            "sweep: resuming %s (finished trials stay, unfinished ones continue)", display(experiment)
        )
        tuner = tune.Tuner.restore(
            f"{storage_path}/{experiment.name}",
            trainable=trainable,
            resume_unfinished=True,
            param_space=param_space(space, settings.seed_values(cfg.run.seed)),
            storage_filesystem=storage_filesystem,
        )
    else:
        control = space.values_of(cfg) if settings.control else None
        logger.info(
            "sweep: %s trial(s) over %s%s%s; %s, %s search; objective %s; up to %d at once, %d report(s) per "
            "trial",
            "?" if settings.search == "optuna" else settings.num_samples * space.grid_size * settings.seeds,
            ", ".join(space.keys), f", and the control {control}" if control else " (no control)",
            f", each over {settings.seeds} seeds" if settings.seeds > 1 else "",
            settings.scheduler, settings.search, objective.describe(), settings.max_concurrent_trials, max_t,
        )  # fmt: skip
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(space, settings.seed_values(cfg.run.seed)),
            tune_config=tune.TuneConfig(
                scheduler=make_scheduler(
                    settings, objective, space, max_t=max_t, seed=cfg.run.seed, decisions=sweep.asha
                ),
                num_samples=num_samples(settings, control=control is not None),
                search_alg=make_search(settings, objective, seed=cfg.run.seed, control=control),
                trial_dirname_creator=_trial_dirname,
                # a trial that ends hands its actor (and its reservation) to the next one instead of a new
                # process; PBT's pauses and exploits too. Where the function thread outlives the end (2 s,
                # TUNE_FUNCTION_THREAD_TIMEOUT_S), Tune starts a new actor as before
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=experiment.name,
                storage_path=storage_path,
                storage_filesystem=storage_filesystem,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                callbacks=[FailureLog(settings.max_failures)],
                # PBT clones other trials' checkpoints: keep enough that a donor's is still there
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if settings.scheduler == "pbt" else 2),
                verbose=0,
            ),
        )
    grid = tuner.fit()
    return record_sweep([grid[i] for i in range(len(grid))], setup, space, started, trial_failures(grid))


class FailureLog(tune.Callback):
    """Says on the console when a trial fails (its function or one of its PPO roles died: an error, a lost
    node) and whether Tune restarts it from its last checkpoint or gives it up (``--max-failures``)."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        logger.warning(
            "sweep: trial %s failed (failure %d of at most %d); restarting it from its last checkpoint",
            trial.trial_id, trial.num_failures, self.max_failures,
        )  # fmt: skip

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        logger.warning(
            "sweep: trial %s failed (failure %d; --max-failures %d): given up, the sweep goes on without it",
            trial.trial_id, trial.num_failures, self.max_failures,
        )  # fmt: skip


def trial_failures(grid: Any) -> dict[str, int]:
    """Tune's count of each trial's failures (``Trial.num_failures``, kept across a resume), by trial id;
    the result grid holds its trials only in its (private) experiment analysis."""
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    return {str(t.trial_id): int(t.num_failures) for t in trials}


def _prepare_folder(
    sweep: SweepDir, cfg: Config, space: SearchSpace, settings: SweepSettings, *, resume: bool
) -> None:
    """Checks the folder holds a sweep to resume (or none to overwrite), then writes the config, space
    and settings into it.

    Raises:
        SweepError: ``--resume`` without a sweep, or a new sweep over an old one.
    """
    experiment = sweep.experiment
    storage_path, storage_filesystem = tune_storage(sweep)
    path = f"{storage_path}/{experiment.name}"
    if resume and not tune.Tuner.can_restore(path, storage_filesystem=storage_filesystem):
        raise SweepError(
            f"--resume: no sweep to continue in {display(sweep.path)} (no Tune experiment state under "
            f"{display(experiment)}). Fix: run the sweep without --resume first, or pass the folder it "
            "wrote (--out)."
        )
    if not resume and _holds_experiment(experiment):
        raise SweepError(
            f"{display(sweep.path)} already holds a sweep. Fix: continue it with --resume, or write this "
            "one elsewhere with --out (or delete the folder)."
        )
    sweep.path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, sweep.config)  # publishes
    sweep.space.write_text(
        yaml.safe_dump({d.key: {d.kind: list(d.args)} for d in space.dimensions}, sort_keys=False)
    )
    publish(sweep.space)
    _write_settings(sweep, settings)


def _write_settings(sweep: SweepDir, settings: SweepSettings) -> None:
    sweep.settings.write_text(json.dumps(settings.to_json(), indent=2) + "\n")
    publish(sweep.settings)


def tune_storage(sweep: SweepDir) -> tuple[str, pafs.FileSystem | None]:
    """Tune's ``(storage_path, storage_filesystem)`` of the sweep: the bucket path of ``sweep.tune`` and
    its filesystem when the sweep folder mirrors a URI, else the resolved local folder and ``None``."""
    folder = sweep.tune
    return ray_storage(folder if uri_of(folder) else folder.resolve())


def _holds_experiment(experiment: Path) -> bool:
    """Whether Tune's experiment folder exists (in the bucket, for a folder mirroring a URI)."""
    if uri_of(experiment) is None:
        return experiment.exists()
    return bool(list_names(experiment))


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
