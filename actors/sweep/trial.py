"""Sweep pieces on Ray: a search space as ``ray.tune`` objects, a trial's reservation, its dev metric.

A trial reserves one placement group: bundle 0 runs the trial function (and its dev evaluation,
in-process while PPO waits), bundles 1.. hold :func:`~actors.cluster.placement.ppo_bundles` of the trial's
own config. :class:`DevEvaluator` scores a policy folder on a fixed, seeded slice of a labelled split
(Emp-F1, per-mechanism F1, gold perplexity, Dist-2) with an evaluation worker and an identifier
scorer built in-process: cheap enough to report every few PPO iterations for ASHA (on a CPU trial they do
its final evaluation too). A trial runs on any
node: the dev policy the learner exported is fetched before it is scored, a checkpoint goes to Tune from
the store, and a checkpoint restored from Tune is uploaded to the store, so the PPO roles on any node find it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
from ray import tune

from actors.cluster.placement import ppo_bundles
from actors.inference.evaluator import EvaluationWorker, prompt_chunks
from actors.inference.scorer import IdentifierScorerWorker
from actors.ppo.checkpoints import CONTROLLER, CheckpointStore
from pipeline import storage
from pipeline.config import MECHANISMS, Config
from pipeline.config.search_space import SEED_KEY, Dimension, SearchSpace
from pipeline.evaluation.bootstrap import bootstrap_std_error
from pipeline.evaluation.classification import emp_f1
from pipeline.evaluation.suite import LabeledSplit, PolicyOutputs, policy_metrics
from pipeline.models import load_tokenizer
from pipeline.scoring import LevelScores
from pipeline.storage.transfer import MARKER

logger = logging.getLogger(__name__)


def tune_domain(dim: Dimension) -> Any:
    """The ``ray.tune`` sampler (or grid) of one dimension."""
    kind, args = dim.kind, dim.args
    if kind == "uniform":
        return tune.uniform(args[0], args[1])
    if kind == "loguniform":
        return tune.loguniform(args[0], args[1])
    if kind == "randint":
        return tune.randint(args[0], args[1])
    if kind == "choice":
        return tune.choice(list(args))
    return tune.grid_search(list(args))


CONTROL_KEY = "sweep_control"
"""A trial config's marker of the sweep's control (the base config's own values of the swept keys); not a
config key (every config key is dotted: ``section.name``); every other trial has it ``False``."""


def param_space(space: SearchSpace, seeds: Sequence[int] = ()) -> dict[str, Any]:
    """``{dotted key: tune domain}`` plus :data:`CONTROL_KEY` (``False``; the control's point sets it) and,
    for more than one of ``seeds``, ``run.seed`` as a grid over them (every configuration once per seed)."""
    seed_grid = {SEED_KEY: tune.grid_search(list(seeds))} if len(seeds) > 1 else {}
    return {**{d.key: tune_domain(d) for d in space.dimensions}, **seed_grid, CONTROL_KEY: False}


def is_control(trial_config: dict[str, Any] | None) -> bool:
    """Whether a trial config is the sweep's control."""
    return bool((trial_config or {}).get(CONTROL_KEY, False))


def trial_bundles(cfg: Config, *, trial_cpus: float) -> list[dict[str, float]]:
    """The trial's placement group: the trial function's bundle, then the PPO roles' bundles."""
    return [{"CPU": trial_cpus}, *(dict(b.resources) for b in ppo_bundles(cfg))]


def trial_resources(base: Config, *, trial_cpus: float) -> Any:
    """A callable ``trial config -> PlacementGroupFactory`` for :func:`ray.tune.with_resources`: a
    sampled ``rollout.num_workers`` (or any key that changes the bundle list) reserves its own list."""

    def resources(trial_config: dict[str, Any]) -> tune.PlacementGroupFactory:
        cfg = base.with_overrides(plain_values(trial_config))
        return tune.PlacementGroupFactory(
            trial_bundles(cfg, trial_cpus=trial_cpus), strategy=cfg.resources.placement
        )

    return resources


def plain_values(trial_config: dict[str, Any]) -> dict[str, Any]:
    """The swept values of a trial config (without :data:`CONTROL_KEY`), NumPy scalars (``tune.randint``
    draws ``np.int64``) as Python ones, which the config's strict types accept."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in trial_config.items() if k != CONTROL_KEY}


def dev_slice(split: LabeledSplit, size: int, *, seed: int) -> LabeledSplit:
    """``size`` rows of ``split`` drawn once with ``seed`` (kept in split order): every report of every
    trial scores the same examples."""
    n = len(split)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    return split.subset(rows, f"{split.name}[dev {len(rows)}]")


def partition(
    split: LabeledSplit, confirm_examples: int, *, seed: int
) -> tuple[LabeledSplit, LabeledSplit | None]:
    """``(search, confirmation)``: ``confirm_examples`` rows of ``split`` (at most half of it), drawn with
    ``seed``, that the search never sees (no dev slice, no trial's final evaluation), and the rest, both in
    split order; ``(split, None)`` for 0."""
    if confirm_examples <= 0:
        return split, None
    n = len(split)
    held = np.random.default_rng([seed, 1]).choice(n, size=min(confirm_examples, n // 2), replace=False)
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    search = split.subset(np.flatnonzero(~mask), f"{split.name}[search]")
    return search, split.subset(np.flatnonzero(mask), f"{split.name}[confirmation {int(mask.sum())}]")


class DevEvaluator:
    """Scores policy folders on one labelled slice in this process (no actors, no extra bundles)."""

    def __init__(self, cfg: Config, split: LabeledSplit, identifiers_dir: Path) -> None:
        self.cfg, self.split = cfg, split
        res = cfg.resources
        self.worker = EvaluationWorker(
            cfg.rollout, cfg.model.max_source_len, cfg.model.max_target_len, cfg.sft.eval_batch_size,
            res.torch_threads, "cpu",
        )  # fmt: skip
        self.scorer = IdentifierScorerWorker(identifiers_dir, cfg.identifiers, res.torch_threads, "cpu")

    def outputs(self, policy_dir: Path) -> PolicyOutputs:
        """The policy's responses on the slice (the config's sampling, seeded per chunk by ``run.seed``:
        every trial of one seed samples its dev responses with the same random numbers), their identifier
        levels and the gold responses' NLL."""
        # a mirror path stays one (resolving links could leave the mirror); the reads below fetch it
        folder = str(policy_dir if storage.uri_of(policy_dir) else policy_dir.resolve())
        self.worker.folder = None  # the folder is rewritten in place between reports: reload it
        chunks = prompt_chunks(self.cfg, load_tokenizer(folder, key="dev policy"), self.split)
        responses = tuple(r for c in chunks for r in self.worker.generate(folder, c))
        nll_sums, nll_tokens = self.worker.gold_nll(folder, self.split.contexts, self.split.references)
        levels: LevelScores = self.scorer.score(self.split.contexts, responses)
        return PolicyOutputs(
            name="dev",
            folder=folder,
            responses=responses,
            pred_levels=dict(levels.levels),
            nll_sums=nll_sums,
            nll_tokens=nll_tokens,
        )

    def __call__(self, policy_dir: Path) -> dict[str, float]:
        """``dev/emp_f1``, ``dev/{er,ip,ex}_f1``, ``dev/perplexity``, ``dev/dist2`` of ``policy_dir``
        (:meth:`outputs`), and ``dev/emp_f1_se``, the bootstrap standard error of ``dev/emp_f1`` over the
        slice's examples (its noise: reports closer than about twice it are not told apart)."""
        outputs = self.outputs(policy_dir)
        se = emp_f1_std_error(self.split, outputs.pred_levels, len(self.split), seed=self.cfg.run.seed)
        return {**metric_row("dev", policy_metrics(outputs, self.split)), "dev/emp_f1_se": se}


def emp_f1_std_error(
    split: LabeledSplit, pred_levels: dict[str, Any], size: int, *, seed: int, n_resamples: int = 200
) -> float:
    """The standard error of Emp-F1 on a slice of ``size`` examples like ``split``'s, from the levels
    predicted for its responses (:func:`~pipeline.evaluation.bootstrap.bootstrap_std_error`; ``size ==
    len(split)``: the bootstrap standard error of its own Emp-F1); NaN below 2 examples."""
    gold = split.gold_levels

    def score(idx: Any) -> float:
        return float(
            emp_f1({m: g[idx] for m, g in gold.items()}, {m: pred_levels[m][idx] for m in gold})["emp_f1"]
        )

    return bootstrap_std_error(score, len(split), size=size, n_resamples=n_resamples, seed=seed)


def metric_row(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The scalars a sweep reports of one policy's :func:`policy_metrics`, as ``prefix/name``."""
    keys = ("emp_f1", *(f"{m.lower()}_f1" for m in MECHANISMS), "perplexity", "dist2", "mean_length")
    return {f"{prefix}/{k}": float(metrics[k]) for k in keys}


def tune_checkpoint(folder: Path) -> tune.Checkpoint:
    """The PPO checkpoint ``folder`` as a Tune checkpoint. One that mirrors a URI is taken from the store,
    where it is complete (the learner ranks upload their shards from whichever nodes they run on, so
    this node's copy may hold only some); Tune copies it from there into its own storage."""
    path, filesystem = storage.ray_storage(folder)
    return tune.Checkpoint(path=path, filesystem=filesystem or pafs.LocalFileSystem())


def restore_checkpoint(checkpoint_dir: Path, store_root: Path) -> int:
    """Make ``checkpoint_dir`` (a PPO ``iter_N`` folder a trial reported, as Tune downloaded it) the only
    checkpoint under ``store_root``, so the PPO stage resumes from it; returns its iteration.

    For a ``store_root`` that mirrors a URI the store's checkpoints are replaced too (a newer one the
    interrupted attempt left there must not win) and this one uploaded before the store marks it
    complete, so PPO roles on any node resume from it."""
    iteration = int(json.loads((checkpoint_dir / CONTROLLER).read_text())["iteration"])
    storage.remove(store_root)
    store = CheckpointStore(store_root, keep=1)
    with store.writing(iteration) as folder:
        shutil.copytree(checkpoint_dir, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))
        storage.upload(folder)  # nothing to do for a local folder
    logger.info("trial restored from its Tune checkpoint: PPO iteration %d", iteration)
    return iteration
