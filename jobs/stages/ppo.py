"""PPO stage: EmpRL's reinforcement learning of the SFT policy towards the gold empathy levels."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from actors.cluster.placement import Reservation
from actors.ppo.checkpoints import has_checkpoints
from actors.ppo.controller import Hook, PPOController, PPOInputs
from actors.ppo.metrics import Sink
from jobs.stages.result import StageResult, write_json
from pipeline import storage
from pipeline.config import MECHANISMS, Config, save_config
from pipeline.layout import RunLayout
from pipeline.scoring import identifier_folders

logger = logging.getLogger(__name__)

HEADLINE_KEYS = ("reward/score", "rollout/kl", "rollout/kl_coef", *(f"reward/{m}_hit" for m in MECHANISMS))


class PPOInputError(ValueError):
    """A PPO input is missing or unusable; the message names it and the fix."""


def load_ppo_inputs(
    layout: RunLayout,
    *,
    policy: Path | None = None,
    identifiers: Path | None = None,
    prompts: Path | None = None,
) -> PPOInputs:
    """The start policy, identifiers and labelled prompts, each checked (defaults: the run's
    ``sft.policy``, ``identifiers`` and labelled ``train`` split).

    Folders that mirror an object store are checked there (a folder counts once its completion marker
    is written); the policy and the prompts are fetched to this node, which reads them, the
    identifiers only checked (the reward scorers fetch them on their nodes).
    """
    policy = policy or layout.sft.policy
    identifiers = identifiers or layout.identifiers.path
    prompts = prompts or layout.labeled.split("train")
    run = storage.display(layout.root)
    if not (storage.exists(policy) and (storage.fetch(policy) / "config.json").is_file()):
        raise PPOInputError(
            f"no policy at {storage.display(policy)} (config.json missing, or not completely uploaded). "
            f"Fix: run `emprl sft --run-dir {run}` first, or pass --policy <folder saved by the SFT stage>."
        )
    if storage.uri_of(identifiers) is not None:
        missing = [m for m in MECHANISMS if not storage.exists(identifiers / m)]
        if missing:
            raise PPOInputError(
                f"identifiers folder {storage.display(identifiers)} has no complete "
                f"{' / '.join(f'{m}/' for m in missing)} identifier (a folder written by save_identifier, "
                "with its completion marker). Fix: run `emprl identifiers train` first, or pass --identifiers."
            )
    else:
        try:
            identifier_folders(identifiers)
        except Exception as exc:
            raise PPOInputError(
                f"{exc} Fix: run `emprl identifiers train` first, or pass --identifiers."
            ) from exc
    if not (storage.exists(prompts) and storage.fetch(prompts).is_file()):
        raise PPOInputError(
            f"no labelled prompts at {storage.display(prompts)}. Fix: run `emprl identifiers label --run-dir "
            f"{run}` first, or pass --prompts <labelled parquet>."
        )
    columns = ["context", *(f"{m.lower()}_level" for m in MECHANISMS)]
    names = pq.read_schema(prompts).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise PPOInputError(
            f"{storage.display(prompts)} has no {missing} column(s) (columns: {names}). Fix: use the label job's output, "
            "which holds the gold ER/IP/EX levels of every response."
        )
    table = pq.read_table(prompts, columns=columns)
    if table.num_rows == 0:
        raise PPOInputError(f"{storage.display(prompts)} has no rows. Fix: label a non-empty ED split.")
    levels = {m: table[f"{m.lower()}_level"].to_numpy().astype(np.int64) for m in MECHANISMS}
    for m, v in levels.items():
        if v.min() < 0 or v.max() > 2:
            raise PPOInputError(
                f"{storage.display(prompts)}: {m.lower()}_level holds {sorted(set(v.tolist()))}; levels are 0, 1, 2."
            )
    return PPOInputs(  # a mirror path stays as it is: it names its URI on every node
        policy_dir=policy if storage.uri_of(policy) else policy.resolve(),
        identifiers_dir=identifiers if storage.uri_of(identifiers) else identifiers.resolve(),
        contexts=table["context"].to_pylist(),
        gold_levels=levels,
    )


def check_ppo_inputs(
    layout: RunLayout,
    *,
    resume: bool,
    policy: Path | None = None,
    identifiers: Path | None = None,
    prompts: Path | None = None,
) -> PPOInputs:
    """:func:`load_ppo_inputs`, and refuse to overwrite an existing PPO run unless resuming (no Ray needed)."""
    inputs = load_ppo_inputs(layout, policy=policy, identifiers=identifiers, prompts=prompts)
    if not resume and has_checkpoints(layout.ppo.checkpoints):
        raise PPOInputError(
            f"{storage.display(layout.ppo.path)} already holds checkpoints. Fix: pass --resume to continue that run, or use a "
            "new --run-dir."
        )
    return inputs


def ppo_stage(
    cfg: Config,
    layout: RunLayout,
    *,
    resume: bool = True,
    inputs: PPOInputs | None = None,
    sinks: Sequence[Sink] = (),
    reservation: Reservation | None = None,
    hooks: Sequence[Hook] = (),
) -> StageResult:
    """Run PPO into ``layout.ppo`` (the policy, checkpoints, ``metrics.jsonl``, ``metrics.json``).

    ``inputs`` already checked by :func:`check_ppo_inputs` skip that step. Every iteration's metrics
    row (and checkpoint path, when one is written) goes to each of ``sinks``. With ``reservation``
    (e.g. a Tune trial's placement group) every role is placed inside it and no placement group is
    created; without one the stage reserves :func:`~actors.cluster.placement.ppo_bundles` itself.
    """
    started = time.perf_counter()
    out = layout.ppo
    inputs = inputs or check_ppo_inputs(layout, resume=resume)
    out.path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out.config)
    logger.info(
        "PPO: %d prompts, %d iterations of %d rollouts, %d rollout worker(s), %d reward scorer(s), "
        "%d learner rank(s) (DeepSpeed ZeRO-%d)",
        len(inputs.contexts), cfg.ppo.total_steps, cfg.ppo.rollout_batch_size, cfg.rollout.num_workers,
        cfg.reward.num_scorers, cfg.learner.num_ranks, cfg.learner.engine.zero_stage,
    )  # fmt: skip
    controller = PPOController(cfg, inputs, out, sinks=sinks, hooks=hooks, reservation=reservation)
    try:
        summary = controller.run()
    finally:
        controller.shutdown()
    history = controller.read_metrics()
    summary["first"] = {k: history[0][k] for k in HEADLINE_KEYS} if history else {}
    summary["last"] = {k: history[-1][k] for k in HEADLINE_KEYS} if history else {}
    summary["samples_per_s"] = (
        float(np.median([h["perf/samples_per_s"] for h in history])) if history else 0.0
    )
    write_json(out.metrics, {**summary, "history": history})
    first, last = summary["first"], summary["last"]
    headline = f"{summary['iterations']} iterations, {summary['samples']} samples, {summary['samples_per_s']:.1f} samples/s"
    if first and last:
        headline += (
            f"; reward {first['reward/score']:.3f} -> {last['reward/score']:.3f}, "
            f"KL {last['rollout/kl']:.3f}, kl_coef {last['rollout/kl_coef']:.4f}"
        )
    return StageResult(
        stage="ppo",
        folder=out.path,
        metrics=summary,
        headline=headline,
        outputs={"policy": out.policy, "metrics": out.metrics},
        seconds=time.perf_counter() - started,
    )
