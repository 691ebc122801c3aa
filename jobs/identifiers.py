"""Identifier stages: train the ER/IP/EX classifiers on EPITOME, and label ED with them.

Laptop:        emprl identifiers train [--preset local] [--run-dir runs/ids] [KEY=VALUE ...]
               emprl identifiers label --run-dir runs/ids     (writes runs/ids/labeled/<split>.parquet)
Cluster job:   ray job submit --working-dir . -- python -m jobs.identifiers train --preset paper \
                   --run-dir /shared/runs/ids resources.address=auto
Sweep:         not swept; PPO trials reuse the trained identifiers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from actors.cluster import init_ray, shutdown_ray
from actors.identifier_trainer import TrainSpec, train_identifiers
from actors.labeling import label_splits
from jobs.common import add_config_args, config_from_args, make_run_dir, run_module, setup_logging, write_json
from pipeline.config import Config
from pipeline.data import PreparedData, prepare_datasets
from pipeline.models import build_identifier_tokenizer
from pipeline.training.identifiers import LabeledPairs

logger = logging.getLogger(__name__)

SHARPE_2020 = {"ER": (79.4, 74.5), "IP": (84.0, 62.6), "EX": (92.6, 72.6)}
"""Sharma et al. 2020 (RoBERTa, TalkLife + Reddit), accuracy / macro-F1 — the targets to beat."""


def identifier_texts(data: PreparedData) -> list[str]:
    """Text a locally trained identifier tokenizer learns from: EPITOME train and ED train."""
    epi, ed = data.epitome["train"], data.ed["train"]
    return [*epi["seeker_post"], *epi["response_post"], *ed["context"], *ed["response"]]


def train_stage(cfg: Config, data: PreparedData, out_dir: Path, *, resume: bool = True) -> dict[str, Any]:
    """Train the identifiers into ``out_dir`` (``<M>/`` folders, ``metrics.json``); Ray must be up."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = out_dir / "tokenizer"
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        build_identifier_tokenizer(cfg.identifiers, identifier_texts(data)).save_pretrained(tokenizer_dir)
    columns = {split: data.epitome[split].to_dict() for split in ("train", "dev", "test")}
    specs = [
        TrainSpec(
            mechanism=m,
            cfg=cfg.identifiers,
            tokenizer_dir=str(tokenizer_dir.resolve()),
            train=LabeledPairs.from_columns(columns["train"], m),
            dev=LabeledPairs.from_columns(columns["dev"], m),
            test=LabeledPairs.from_columns(columns["test"], m),
            seed=cfg.run.seed,
            torch_threads=cfg.resources.torch_threads,
        )
        for m in cfg.identifiers.mechanisms
    ]
    metrics = train_identifiers(specs, cfg.resources, out_dir, resume=resume)
    table = summary_table(metrics)
    write_json(out_dir / "metrics.json", {"mechanisms": metrics, "table": table})
    for line in table:
        logger.info(line)
    return {
        m: {"test_accuracy": v["test"]["accuracy"], "test_macro_f1": v["test"]["macro_f1"]}
        for m, v in metrics.items()
    }


def label_stage(cfg: Config, data: PreparedData, identifiers_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Label every gold ED response with the identifiers (resumable); Ray must be up."""
    stats = label_splits(
        {split: data.ed[split] for split in cfg.data.splits if split in data.ed},
        identifiers_dir,
        out_dir,
        cfg.identifiers,
        cfg.resources,
        num_workers=cfg.reward.num_scorers,
    )
    for split, info in stats["splits"].items():
        dist = {m: info["levels"][m]["fractions"] for m in info["levels"]}
        logger.info("%s: %d responses labelled; level fractions %s", split, info["rows"], dist)
    return {
        "splits": {k: v["rows"] for k, v in stats["splits"].items()},
        "rows_per_s": stats["run"]["rows_per_s"],
    }


def summary_table(metrics: dict[str, Any]) -> list[str]:
    """Test accuracy / macro-F1 per mechanism next to Sharma et al. 2020 and the majority class."""
    lines = [
        f"{'mech':4} {'acc':>6} {'macroF1':>8} | {'Sharma acc':>10} {'F1':>5} | {'majority acc':>12} {'F1':>5}"
    ]
    for m, v in metrics.items():
        ref_acc, ref_f1 = SHARPE_2020[m]
        base = v["majority_baseline_test"]
        lines.append(
            f"{m:4} {100 * v['test']['accuracy']:6.1f} {100 * v['test']['macro_f1']:8.1f} | "
            f"{ref_acc:10.1f} {ref_f1:5.1f} | {100 * base['accuracy']:12.1f} {100 * base['macro_f1']:5.1f}"
        )
    return lines


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("identifiers", help="train the empathy identifiers, or label ED with them")
    actions = parser.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="train ER/IP/EX identifiers on EPITOME with Ray Train")
    add_config_args(train)
    train.add_argument("--run-dir", type=Path, default=None, help="run folder (re-use one to resume)")
    train.add_argument("--no-resume", action="store_true", help="ignore checkpoints in the run folder")
    train.set_defaults(func=train_main)
    label = actions.add_parser("label", help="label ED gold responses with trained identifiers (resumable)")
    add_config_args(label)
    label.add_argument("--run-dir", type=Path, required=True, help="run folder holding identifiers/")
    label.set_defaults(func=label_main)


def train_main(args: argparse.Namespace) -> None:
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    run_dir = args.run_dir or make_run_dir(cfg, "identifiers")
    run_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_datasets(cfg.data)
    owns = init_ray(cfg.resources)
    try:
        result = train_stage(cfg, data, run_dir / "identifiers", resume=not args.no_resume)
    finally:
        if owns:
            shutdown_ray()
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def label_main(args: argparse.Namespace) -> None:
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    data = prepare_datasets(cfg.data)
    owns = init_ray(cfg.resources)
    try:
        result = label_stage(cfg, data, args.run_dir / "identifiers", args.run_dir / "labeled")
    finally:
        if owns:
            shutdown_ray()
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    run_module("identifiers", add_parser, argv)


if __name__ == "__main__":
    main()
