"""The whole pipeline in one run folder: every stage that exists, in order, then a summary.

Laptop:        emprl run                      (local preset: local Ray on 127.0.0.1, tiny models, demo data)
               emprl run --preset paper data.ed_path=data/empatheticdialogues data.epitome_path=data/epitome
Cluster job:   ray job submit --working-dir . -- python -m jobs.run --preset paper resources.address=auto
Sweep:         see `emprl tune` (PPO search space over the same dotted keys).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from actors.cluster import init_ray, shutdown_ray, worker_env
from jobs.common import add_config_args, config_from_args, make_run_dir, run_module, setup_logging, write_json
from jobs.evaluate import evaluate_stage
from jobs.identifiers import label_stage, train_stage
from jobs.ppo import ppo_stage
from jobs.sft import init_policy, sft_stage
from pipeline.config import Config
from pipeline.data import DataError, PreparedData, prepare_datasets

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """What stages hand each other inside one run."""

    cfg: Config
    run_dir: Path
    data: PreparedData | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def _prepare_remote(cfg: Config) -> PreparedData:
    import torch

    torch.set_num_threads(cfg.resources.torch_threads)
    return prepare_datasets(cfg.data)


def stage_data(state: RunState) -> dict[str, Any]:
    """Parse, split and cache the datasets (a Ray task, so the cluster does the I/O)."""
    task = ray.remote(num_cpus=1, runtime_env={"env_vars": worker_env(state.cfg.resources)})(_prepare_remote)
    state.data = ray.get(task.remote(state.cfg))
    write_json(state.run_dir / "data" / "stats.json", state.data.stats)
    return {"ed": state.data.stats["ed"], "epitome_pairs": state.data.stats["epitome"]["splits"]}


def stage_identifiers(state: RunState) -> dict[str, Any]:
    """Train the ER/IP/EX identifiers on EPITOME (Ray Train), keep the best epoch by dev macro-F1."""
    assert state.data is not None
    return train_stage(state.cfg, state.data, state.run_dir / "identifiers")


def stage_label(state: RunState) -> dict[str, Any]:
    """Label every gold ED listener response with the identifiers (the PPO target levels)."""
    assert state.data is not None
    return label_stage(state.cfg, state.data, state.run_dir / "identifiers", state.run_dir / "labeled")


def stage_init(state: RunState) -> dict[str, Any]:
    """The policy tokenizer and the initial policy SFT starts from (``model.*``)."""
    assert state.data is not None
    return init_policy(state.cfg, state.data, state.run_dir / "init" / "policy")


def stage_sft(state: RunState) -> dict[str, Any]:
    """Fine-tune the initial policy on the labelled ED (MLE, Ray Train + DeepSpeed), best epoch by val loss."""
    assert state.data is not None
    return sft_stage(state.cfg, state.data, state.run_dir)


def stage_ppo(state: RunState) -> dict[str, Any]:
    """Reinforcement learning of the SFT policy towards the gold empathy levels (PPO on Ray actors)."""
    return ppo_stage(state.cfg, state.run_dir)


def stage_evaluate(state: RunState) -> dict[str, Any]:
    """SFT and PPO side by side on the validation split: Emp-F1, the paper's metrics and a report."""
    return evaluate_stage(state.cfg, state.run_dir)


STAGES: list[tuple[str, Callable[[RunState], dict[str, Any]]]] = [
    ("data", stage_data),
    ("identifiers", stage_identifiers),
    ("label", stage_label),
    ("init", stage_init),
    ("sft", stage_sft),
    ("ppo", stage_ppo),
    ("evaluate", stage_evaluate),
]


def run(cfg: Config) -> Path:
    """Run every stage into a fresh run folder; returns the folder (``summary.json`` inside)."""
    run_dir = make_run_dir(cfg, "run")
    state = RunState(cfg=cfg, run_dir=run_dir)
    owns_ray = init_ray(cfg.resources)
    started = time.perf_counter()
    try:
        for index, (name, stage) in enumerate(STAGES, 1):
            logger.info("stage %d/%d: %s", index, len(STAGES), name)
            t0 = time.perf_counter()
            result = stage(state)
            state.summary[name] = {**result, "seconds": round(time.perf_counter() - t0, 2)}
            write_json(run_dir / "summary.json", state.summary)
    finally:
        if owns_ray:
            shutdown_ray()
    state.summary["total_seconds"] = round(time.perf_counter() - started, 2)
    write_json(run_dir / "summary.json", state.summary)
    return run_dir


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("run", help="run the whole pipeline (default: local preset on demo data)")
    add_config_args(parser)
    parser.set_defaults(func=main_args)


def main_args(args: argparse.Namespace) -> None:
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    try:
        run_dir = run(cfg)
    except DataError as exc:
        raise SystemExit(f"data error: {exc}") from None
    summary = (run_dir / "summary.json").read_text()
    sys.stdout.write(f"run complete: {run_dir.resolve()}\n{summary}")
    report = run_dir / "evaluate" / "report.html"
    if report.is_file():
        sys.stdout.write(f"report (open in a browser): {report.resolve()}\n")


def main(argv: list[str] | None = None) -> None:
    run_module("run", add_parser, argv)


if __name__ == "__main__":
    main()
