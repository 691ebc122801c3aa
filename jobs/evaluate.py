"""Evaluate stage: responses of one or more policies on a labelled ED split, Emp-F1 and the paper's metrics.

Laptop:        emprl evaluate --run-dir runs/demo            (the run's sft and ppo policies on valid; writes
                                                               runs/demo/evaluate/report.html)
               emprl evaluate --run-dir runs/demo --policy sft=runs/demo/sft/policy --policy mine=/path \
                   --decoding greedy --max-examples 500
Cluster job:   ray job submit --working-dir . -- python -m jobs.evaluate --preset paper --run-dir /shared/runs/paper \
                   resources.address=auto rollout.num_workers=8 reward.num_scorers=2
Sweep:         for run in runs/tune/*/; do emprl evaluate --run-dir "$run"; done
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from actors.cluster import init_ray, shutdown_ray
from actors.evaluator import PolicySource, evaluate_policies
from jobs.common import add_config_args, config_from_args, run_module, setup_logging, write_json
from pipeline.config import Config, save_config
from pipeline.evaluation.report import build_report
from pipeline.evaluation.suite import (
    EvaluationInputError,
    LabeledSplit,
    evaluate,
    read_labeled_split,
    responses_table,
)
from pipeline.models import ModelSourceError, load_policy
from pipeline.scoring import identifier_folders

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_policy(text: str) -> tuple[str, Path]:
    """``NAME=FOLDER`` of ``--policy``."""
    name, sep, folder = text.partition("=")
    if not sep or not NAME.match(name) or not folder:
        raise argparse.ArgumentTypeError(
            f"--policy {text!r}: expected NAME=FOLDER with NAME of letters, digits, '_', '.', '-' "
            "(e.g. --policy sft=runs/demo/sft/policy)"
        )
    return name, Path(folder)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def resolve_policies(run_dir: Path, given: Sequence[tuple[str, Path]]) -> list[PolicySource]:
    """``given``, or the run's ``sft/policy`` and ``ppo/policy`` that exist; each checked to load.

    Raises:
        EvaluationInputError: no policy, a repeated name, or a folder that does not load.
    """
    if given:
        policies = [PolicySource(name, folder) for name, folder in given]
    else:
        defaults = [("sft", run_dir / "sft" / "policy"), ("ppo", run_dir / "ppo" / "policy")]
        policies = [PolicySource(n, f) for n, f in defaults if (f / "config.json").is_file()]
        if not policies:
            raise EvaluationInputError(
                f"{run_dir} has no sft/policy or ppo/policy to evaluate. Fix: run `emprl sft --run-dir {run_dir}` "
                "(and `emprl ppo`) first, or pass --policy NAME=FOLDER."
            )
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise EvaluationInputError(f"--policy names must be unique, got {names}. Fix: rename one.")
    for p in policies:
        try:
            load_policy(p.folder)
        except (ModelSourceError, ValueError, OSError) as exc:
            raise EvaluationInputError(
                f"policy {p.name!r} at {p.folder} does not load: {exc} Fix: pass a folder written by the SFT "
                "or PPO stage (save_policy), e.g. <run>/sft/policy."
            ) from exc
    return policies


def check_identifiers(folder: Path) -> Path:
    """``folder`` when it holds the ER/IP/EX identifiers, else :class:`EvaluationInputError`."""
    try:
        identifier_folders(folder)
    except ModelSourceError as exc:
        raise EvaluationInputError(f"{exc} Or pass --identifiers <folder>.") from exc
    return folder


@dataclass(frozen=True)
class EvaluationInputs:
    """What the evaluate stage reads, checked: the labelled split, the policies and the identifiers."""

    split: LabeledSplit
    policies: list[PolicySource]
    identifiers: Path


def load_inputs(
    run_dir: Path,
    *,
    policies: Sequence[tuple[str, Path]] = (),
    split: str = "valid",
    identifiers: Path | None = None,
    max_examples: int | None = None,
) -> EvaluationInputs:
    """The split ``<run>/labeled/<split>.parquet``, the policies (default: the run's sft and ppo) and the
    identifiers (default ``<run>/identifiers``), each checked before any work starts.

    Raises:
        EvaluationInputError: an input is missing or unusable; the message names it and the fix.
    """
    data = read_labeled_split(run_dir / "labeled" / f"{split}.parquet", name=split, max_examples=max_examples)
    return EvaluationInputs(
        split=data,
        policies=resolve_policies(run_dir, policies),
        identifiers=check_identifiers(identifiers or run_dir / "identifiers"),
    )


def evaluate_stage(
    cfg: Config,
    run_dir: Path,
    inputs: EvaluationInputs | None = None,
    *,
    decoding: Literal["sample", "greedy"] = "sample",
    out: Path | None = None,
    num_workers: int | None = None,
    n_resamples: int = 1000,
    num_samples: int = 10,
) -> dict[str, Any]:
    """Evaluate ``inputs`` (default: :func:`load_inputs` of the run) into ``out`` (default
    ``<run>/evaluate``): ``metrics.json``, ``responses.parquet``, ``report.md``/``.html``; Ray must be up."""
    started = time.perf_counter()
    inputs = inputs or load_inputs(run_dir)
    data, sources, identifiers, split = inputs.split, inputs.policies, inputs.identifiers, inputs.split.name
    out = out or run_dir / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    logger.info(
        "evaluating %s on %d %s examples (%s decoding)",
        ", ".join(p.name for p in sources),
        len(data),
        split,
        decoding,
    )
    outputs, stats = evaluate_policies(
        cfg, data, sources, identifiers, greedy=decoding == "greedy", num_workers=num_workers
    )
    table = responses_table(data, outputs)
    pq.write_table(table, out / "responses.parquet")
    t0 = time.perf_counter()
    metrics = evaluate(data, outputs, n_resamples=n_resamples, seed=cfg.run.seed)
    stats["time/metrics"] = time.perf_counter() - t0
    r = cfg.rollout
    metrics["decoding"] = (
        {"mode": "greedy"}
        if decoding == "greedy"
        else {"mode": "sample", "top_k": r.top_k, "top_p": r.top_p, "temperature": r.temperature}
    )
    metrics["decoding"].update(
        min_new_tokens=r.min_new_tokens, max_new_tokens=r.max_new_tokens, seed=cfg.run.seed
    )
    metrics["identifiers"] = str(identifiers)
    write_json(out / "metrics.json", metrics)  # before the report: a failing figure loses no numbers
    t0 = time.perf_counter()
    files = build_report(metrics, out, examples=table.slice(0, num_samples).to_pylist(), run_dir=run_dir)
    stats["time/report"] = time.perf_counter() - t0
    stats["time/total"] = time.perf_counter() - started
    metrics["stats"] = stats
    write_json(out / "metrics.json", metrics)
    for name, p in metrics["policies"].items():
        logger.info(
            "%s: Emp-F1 %.2f, perplexity %.2f, Dist-2 %.4f, BLEU-4 %.2f, ROUGE-L %.2f",
            name, p["emp_f1"], p["perplexity"], p["dist2"], p["bleu4"], p["rouge_l"],
        )  # fmt: skip
    logger.info("evaluation report: %s", files.html.resolve())
    return {
        "report": str(files.html),
        "metrics": str(out / "metrics.json"),
        "split": split,
        "n_examples": len(data),
        "emp_f1": {n: p["emp_f1"] for n, p in metrics["policies"].items()},
        "perplexity": {n: p["perplexity"] for n, p in metrics["policies"].items()},
    }


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="Emp-F1, perplexity, Dist-n, BLEU, ROUGE-L of policies on a labelled split, with a report",
    )
    add_config_args(parser)
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="run folder holding labeled/, identifiers/"
    )
    parser.add_argument(
        "--policy", type=parse_policy, action="append", default=[], metavar="NAME=FOLDER",
        help="policy to evaluate (repeatable; the first is the baseline of the comparisons); "
        "default: <run>/sft/policy as sft and <run>/ppo/policy as ppo, those that exist",
    )  # fmt: skip
    parser.add_argument("--split", default="valid", help="labelled split <run>/labeled/<split>.parquet")
    parser.add_argument("--identifiers", type=Path, default=None, help="default: <run>/identifiers")
    parser.add_argument(
        "--decoding", choices=("sample", "greedy"), default="sample",
        help="sample: rollout.top_k/top_p/temperature with run.seed (the paper's test decoding); greedy: argmax",
    )  # fmt: skip
    parser.add_argument(
        "--max-examples", type=int_at_least(1), default=None, help="evaluate the first N examples only"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/evaluate)")
    parser.add_argument(
        "--num-workers",
        type=int_at_least(1),
        default=None,
        help="evaluation workers (default: rollout.num_workers)",
    )
    parser.add_argument(
        "--bootstrap-resamples", type=int_at_least(1), default=1000, help="paired bootstrap resamples"
    )
    parser.add_argument(
        "--samples", type=int_at_least(0), default=10, help="contexts shown side by side in the report"
    )
    parser.set_defaults(func=main_args)


def main_args(args: argparse.Namespace) -> None:
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    try:
        inputs = load_inputs(
            args.run_dir,
            policies=args.policy,
            split=args.split,
            identifiers=args.identifiers,
            max_examples=args.max_examples,
        )
        owns = init_ray(cfg.resources)
        try:
            result = evaluate_stage(
                cfg,
                args.run_dir,
                inputs,
                decoding=args.decoding,
                out=args.out,
                num_workers=args.num_workers,
                n_resamples=args.bootstrap_resamples,
                num_samples=args.samples,
            )
        finally:
            if owns:
                shutdown_ray()
    except EvaluationInputError as exc:
        raise SystemExit(f"evaluation input error: {exc}") from None
    sys.stdout.write(f"report: {Path(result['report']).resolve()}\n")


def main(argv: list[str] | None = None) -> None:
    run_module("evaluate", add_parser, argv)


if __name__ == "__main__":
    main()
