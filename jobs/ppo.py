"""PPO stage: EmpRL's reinforcement learning of the SFT policy towards the gold empathy levels.

Laptop:        emprl ppo --run-dir runs/demo [KEY=VALUE ...]        (reads <run>/sft/policy, <run>/identifiers,
               emprl ppo --run-dir runs/demo --resume                 <run>/labeled/train.parquet)
Cluster job:   ray job submit --working-dir . -- python -m jobs.ppo --preset paper --run-dir /shared/runs/paper \
                   resources.address=auto rollout.num_workers=4 reward.num_scorers=2 learner.num_ranks=4
Sweep:         emprl tune (reward weights and KL settings over these dotted keys)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from actors.cluster import init_ray, shutdown_ray
from actors.controller import Hook, PPOController, PPOInputs
from jobs.common import add_config_args, config_from_args, make_run_dir, run_module, setup_logging, write_json
from pipeline.config import MECHANISMS, Config, save_config
from pipeline.scoring import identifier_folders

logger = logging.getLogger(__name__)


class PPOInputError(ValueError):
    """A PPO input is missing or unusable; the message names it and the fix."""


def load_inputs(
    run_dir: Path, *, policy: Path | None, identifiers: Path | None, prompts: Path | None
) -> PPOInputs:
    """The SFT policy, identifiers and labelled prompts (defaults: the run folder's stage outputs)."""
    policy = policy or run_dir / "sft" / "policy"
    identifiers = identifiers or run_dir / "identifiers"
    prompts = prompts or run_dir / "labeled" / "train.parquet"
    if not (policy / "config.json").is_file():
        raise PPOInputError(
            f"no policy at {policy} (config.json missing). Fix: run `emprl sft --run-dir {run_dir}` first, "
            "or pass --policy <folder saved by the SFT stage>."
        )
    try:
        identifier_folders(identifiers)
    except Exception as exc:
        raise PPOInputError(
            f"{exc} Fix: run `emprl identifiers train` first, or pass --identifiers."
        ) from exc
    if not prompts.is_file():
        raise PPOInputError(
            f"no labelled prompts at {prompts}. Fix: run `emprl identifiers label --run-dir {run_dir}` first, "
            "or pass --prompts <labelled parquet>."
        )
    columns = ["context", *(f"{m.lower()}_level" for m in MECHANISMS)]
    names = pq.read_schema(prompts).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise PPOInputError(
            f"{prompts} has no {missing} column(s) (columns: {names}). Fix: use the label job's output, "
            "which holds the gold ER/IP/EX levels of every response."
        )
    table = pq.read_table(prompts, columns=columns)
    if table.num_rows == 0:
        raise PPOInputError(f"{prompts} has no rows. Fix: label a non-empty ED split.")
    levels = {m: table[f"{m.lower()}_level"].to_numpy().astype(np.int64) for m in MECHANISMS}
    for m, v in levels.items():
        if v.min() < 0 or v.max() > 2:
            raise PPOInputError(
                f"{prompts}: {m.lower()}_level holds {sorted(set(v.tolist()))}; levels are 0, 1, 2."
            )
    return PPOInputs(
        policy_dir=policy.resolve(),
        identifiers_dir=identifiers.resolve(),
        contexts=table["context"].to_pylist(),
        gold_levels=levels,
    )


def check_inputs(
    run_dir: Path, *, resume: bool, policy: Path | None, identifiers: Path | None, prompts: Path | None
) -> PPOInputs:
    """:func:`load_inputs`, and refuse to overwrite an existing run unless resuming (no Ray needed)."""
    inputs = load_inputs(run_dir, policy=policy, identifiers=identifiers, prompts=prompts)
    if not resume and (run_dir / "ppo" / "checkpoints").exists():
        raise PPOInputError(
            f"{run_dir / 'ppo'} already holds checkpoints. Fix: pass --resume to continue that run, or use a "
            "new --run-dir."
        )
    return inputs


def ppo_stage(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = True,
    policy: Path | None = None,
    identifiers: Path | None = None,
    prompts: Path | None = None,
    inputs: PPOInputs | None = None,
    hooks: Sequence[Hook] = (),
) -> dict[str, Any]:
    """Run PPO into ``<run>/ppo``; Ray must be up. Returns the summary (also ``ppo/metrics.json``).

    ``inputs`` already checked by :func:`check_inputs` skip that step."""
    out = run_dir / "ppo"
    inputs = inputs or check_inputs(
        run_dir, resume=resume, policy=policy, identifiers=identifiers, prompts=prompts
    )
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    logger.info(
        "PPO: %d prompts, %d iterations of %d rollouts, %d rollout worker(s), %d reward scorer(s), "
        "%d learner rank(s) (DeepSpeed ZeRO-%d)",
        len(inputs.contexts), cfg.ppo.total_steps, cfg.ppo.rollout_batch_size, cfg.rollout.num_workers,
        cfg.reward.num_scorers, cfg.learner.num_ranks, cfg.learner.zero_stage,
    )  # fmt: skip
    controller = PPOController(cfg, inputs, out, hooks=hooks)
    try:
        summary = controller.run()
    finally:
        controller.shutdown()
    history = controller.read_metrics()
    keys = ("reward/score", "rollout/kl", "rollout/kl_coef", *(f"reward/{m}_hit" for m in MECHANISMS))
    summary["first"] = {k: history[0][k] for k in keys} if history else {}
    summary["last"] = {k: history[-1][k] for k in keys} if history else {}
    summary["samples_per_s"] = (
        float(np.median([h["perf/samples_per_s"] for h in history])) if history else 0.0
    )
    write_json(out / "metrics.json", {**summary, "history": history})
    return summary


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "ppo", help="PPO of the SFT policy on Ray actors (rollout, reward, reference, learner)"
    )
    add_config_args(parser)
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="run folder holding sft/, identifiers/, labeled/"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the run folder's last checkpoint"
    )
    parser.add_argument("--policy", type=Path, default=None, help="start policy (default: <run>/sft/policy)")
    parser.add_argument(
        "--identifiers", type=Path, default=None, help="identifiers (default: <run>/identifiers)"
    )
    parser.add_argument(
        "--prompts", type=Path, default=None, help="labelled prompts (default: <run>/labeled/train.parquet)"
    )
    parser.set_defaults(func=main_args)


def main_args(args: argparse.Namespace) -> None:
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    run_dir = args.run_dir or make_run_dir(cfg, "ppo")
    try:
        paths = {"policy": args.policy, "identifiers": args.identifiers, "prompts": args.prompts}
        inputs = check_inputs(run_dir, resume=args.resume, **paths)  # before Ray: bad inputs fail in a second
        owns = init_ray(cfg.resources)
        try:
            result = ppo_stage(cfg, run_dir, resume=args.resume, inputs=inputs)
        finally:
            if owns:
                shutdown_ray()
    except PPOInputError as exc:
        raise SystemExit(f"PPO input error: {exc}") from None
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    run_module("ppo", add_parser, argv)


if __name__ == "__main__":
    main()
