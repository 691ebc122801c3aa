"""The whole pipeline in one run folder: every stage, in order, then a summary.

Laptop:        emprl run                      (local preset: local Ray on 127.0.0.1, tiny models, demo data)
               emprl run --preset paper data.ed_path=data/empatheticdialogues data.epitome_path=data/epitome
Cluster job:   ray job submit --working-dir . -- python -m jobs.cli.run --preset paper resources.address=auto
Sweep:         see `emprl tune` (PPO search space over the same dotted keys).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from collections.abc import Callable
from typing import Any

from actors.cluster.session import ray_session
from jobs.launch.options import add_config_args, config_from_args, make_run_dir, run_module, stage_console
from jobs.launch.stage import node_loss_stop
from jobs.stages import (
    StageResult,
    data_stage,
    evaluate_stage,
    identifiers_stage,
    init_stage,
    label_stage,
    ppo_stage,
    sft_stage,
)
from jobs.stages.result import write_json
from pipeline import storage
from pipeline.config import Config
from pipeline.data import DataError, PreparedData
from pipeline.layout import RunLayout

logger = logging.getLogger(__name__)

Stage = Callable[[Config, RunLayout, PreparedData], StageResult]

STAGES: list[tuple[str, Stage]] = [
    ("identifiers", lambda cfg, layout, data: identifiers_stage(cfg, layout, data)),
    ("label", lambda cfg, layout, data: label_stage(cfg, layout, data)),
    ("init", lambda cfg, layout, data: init_stage(cfg, layout, data)),
    ("sft", lambda cfg, layout, data: sft_stage(cfg, layout, data)),
    ("ppo", lambda cfg, layout, data: ppo_stage(cfg, layout)),
    ("evaluate", lambda cfg, layout, data: evaluate_stage(cfg, layout)),
]
"""The stages after ``data``, in order; each reads what the ones before it wrote."""

STAGE_NAMES = ["data", *(name for name, _ in STAGES)]


def run(cfg: Config, layout: RunLayout) -> dict[str, Any]:
    """Run every stage into ``layout``; returns the summary (also ``summary.json``). Ray must be up."""
    summary: dict[str, Any] = {}
    started = time.perf_counter()

    def record(index: int, result: StageResult) -> None:
        summary[result.stage] = result.summary()
        write_json(layout.summary, summary)
        storage.publish(layout.log)  # the bucket's copy of the log follows the run stage by stage
        logger.info("stage %d/%d %s done in %.0f s: %s", index, len(STAGE_NAMES), result.stage,
                    result.seconds, result.headline)  # fmt: skip

    logger.info("stage 1/%d: data", len(STAGE_NAMES))
    prepared = data_stage(cfg, layout)
    record(1, prepared)
    assert prepared.prepared is not None
    for index, (name, stage) in enumerate(STAGES, 2):
        logger.info("stage %d/%d: %s", index, len(STAGE_NAMES), name)
        record(index, stage(cfg, layout, prepared.prepared))
    summary["total_seconds"] = round(time.perf_counter() - started, 2)
    write_json(layout.summary, summary)
    return summary


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("run", help="run the whole pipeline (default: local preset on demo data)")
    add_config_args(parser)
    parser.set_defaults(func=main_args)


def main_args(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    layout = RunLayout(make_run_dir(cfg, "run"))
    with stage_console(args, layout) as terminal:
        logger.info("run folder: %s", storage.display(layout.root.resolve()))
        root = storage.display(layout.root.resolve())
        then = shlex.join(
            ["emprl", "ppo", "--preset", args.preset, "--run-dir", root, "--resume", *args.overrides]
        )
        then += "\n  " + shlex.join(
            ["emprl", "evaluate", "--preset", args.preset, "--run-dir", root, *args.overrides]
        )
        try:
            with node_loss_stop(args, then), ray_session(cfg.resources):
                summary = run(cfg, layout)
        except DataError as exc:
            raise SystemExit(f"data error: {exc}") from None
        terminal.write(
            f"run complete in {summary['total_seconds']:.0f} s: {storage.display(layout.root.resolve())}\n"
        )
        terminal.write(f"summary: {storage.display(layout.summary.resolve())}\n")
        if layout.evaluate.report_html.is_file():
            terminal.write(f"report (open in a browser): {layout.evaluate.report_html.resolve()}\n")


def main(argv: list[str] | None = None) -> None:
    run_module("run", add_parser, argv)


if __name__ == "__main__":
    main()
