"""What every job shares: logging set-up, the config arguments, and the run folder."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError, load_config, save_config

logger = logging.getLogger(__name__)


def setup_logging(level: str = "INFO") -> None:
    """Timestamped lines on stderr; the only place logging is configured."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("urllib3", "filelock", "datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--preset`` and positional dotted overrides, the same for every job."""
    parser.add_argument(
        "--preset", default="local", help="preset name in configs/ or a YAML path (default: local)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. ppo.clip_ratio=0.1"
    )
    parser.add_argument("--log-level", default="INFO")


def run_module(command: str, add_parser: Callable[[Any], None], argv: list[str] | None = None) -> None:
    """``python -m jobs.<command> ARGS``: the same parser and handler as ``emprl <command> ARGS``."""
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{command}")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    args.func(args)


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config or exit with the loader's message (no traceback for user errors)."""
    try:
        return load_config(args.preset, list(args.overrides))
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None


def make_run_dir(cfg: Config, stage: str) -> Path:
    """``<run.output_dir>/<run.name or timestamp>`` with the resolved config written into it."""
    name = cfg.run.name or f"{dt.datetime.now():%Y%m%d-%H%M%S}-{stage}"
    run_dir = Path(os.path.expanduser(cfg.run.output_dir)) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    logger.info("run folder: %s", run_dir.resolve())
    return run_dir


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename) so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
