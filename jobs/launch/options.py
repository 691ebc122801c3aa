"""What every job shares: logging set-up, the config arguments, and the run folder."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from jobs.launch.console import console
from pipeline import storage
from pipeline.config import Config, ConfigError, load_config, save_config
from pipeline.config.paths import absolute, absolute_paths
from pipeline.layout import RunLayout

logger = logging.getLogger(__name__)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--preset`` and positional dotted overrides, the same for every job."""
    parser.add_argument(
        "--preset", default="local", help="preset name in configs/ or a YAML path (default: local)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. ppo.clip_ratio=0.1"
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's and the libraries' output too (always in <run>/run.log)",
    )


def add_run_dir_args(parser: argparse.ArgumentParser, holding: str, **paths: str) -> None:
    """A required ``--run-dir`` ("run folder holding ``holding``") and, per keyword ``name=help``, an
    optional ``--name PATH`` (default ``None``; underscores become hyphens)."""
    parser.add_argument("--run-dir", type=user_path, required=True, help=f"run folder holding {holding}")
    for name, text in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=user_path, default=None, help=text)


def run_module(command: str, add_parser: Callable[[Any], None], argv: list[str] | None = None) -> None:
    """``python -m jobs.cli.<command> ARGS``: the same parser and handler as ``emprl <command> ARGS``."""
    parser = argparse.ArgumentParser(prog=f"python -m jobs.cli.{command}")
    add_parser(parser.add_subparsers(dest="command", required=True))
    full = [command, *(sys.argv[1:] if argv is None else argv)]
    args = parser.parse_args(full)
    args.argv = full
    if command != "config":  # a long-running command: SIGTERM stops it as Ctrl-C does
        from actors.cluster.session import stop_on_sigterm

        stop_on_sigterm()
    check_output_storage(args)
    args.func(args)


def config_from_args(args: argparse.Namespace) -> Config:
    """The config of ``--preset`` and the dotted overrides, its relative paths made absolute against the
    working directory (:func:`~pipeline.config.paths.absolute_paths`), or exit with the loader's message."""
    return absolute_paths(load_or_exit(args.preset, list(args.overrides)))


def load_or_exit(preset: str, overrides: list[str]) -> Config:
    """Load the config or exit with the loader's message (no traceback for user errors)."""
    try:
        return load_config(preset, overrides)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None


def user_path(text: str) -> Path:
    """An argparse ``type`` for a file or folder the user names: a URI (``s3://``, ``gs://``) as its
    node-local mirror folder (:func:`pipeline.storage.local_path`), a path made absolute against the
    working directory at once, so a Ray worker or a Tune trial (each in its own folder) finds the same place.

    Raises:
        argparse.ArgumentTypeError: a URI of an unknown scheme or without a bucket, with the fix.
    """
    if storage.is_uri(text):
        try:
            return storage.local_path(text)
        except storage.StorageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return Path(absolute(os.path.expanduser(text)))


_PROBED: set[str] = set()
OUTPUT_ARGS = ("run_dir", "out", "dest")
"""Arguments that name a folder a command writes into: probed before the command does any work."""
READ_ONLY_COMMANDS = ("serve", "config")
"""Commands that write nowhere (a serving role may hold read-only credentials)."""


def check_output_storage(args: argparse.Namespace) -> None:
    """:func:`check_storage` of the folders a parsed command will write into, before it does anything."""
    if getattr(args, "command", None) in READ_ONLY_COMMANDS:
        return
    check_storage(*(value for name in OUTPUT_ARGS if isinstance(value := getattr(args, name, None), Path)))


def check_storage(*folders: Path | str) -> None:
    """Probe each folder that mirrors a URI (or is one) with a small write before any work, once per
    process; exit with the named error and its fix when one cannot be used."""
    for folder in folders:
        uri = storage.uri_of(folder) if not storage.is_uri(folder) else str(folder)
        if uri is None or uri in _PROBED:
            continue
        try:
            storage.check_location(uri)
        except storage.StorageError as exc:
            raise SystemExit(f"storage error: {exc}") from None
        _PROBED.add(uri)


def make_run_dir(cfg: Config, stage: str) -> Path:
    """``<run.output_dir>/<run.name or timestamp>`` with the resolved config written into it."""
    name = cfg.run.name or f"{dt.datetime.now():%Y%m%d-%H%M%S}-{stage}"
    check_storage(cfg.run.output_dir)
    layout = RunLayout(storage.local_path(os.path.expanduser(cfg.run.output_dir)) / name)
    layout.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, layout.config)
    logger.info("run folder: %s", storage.display(layout.root.resolve()))
    return layout.root


def run_layout(cfg: Config, run_dir: Path | None, stage: str) -> RunLayout:
    """The layout of ``--run-dir``, or of a new run folder named by ``run.*`` (config written into it)."""
    return RunLayout(run_dir if run_dir is not None else make_run_dir(cfg, stage))


@contextmanager
def stage_console(args: argparse.Namespace, layout: RunLayout) -> Iterator[TextIO]:
    """:func:`jobs.launch.console.console` into the run's log, with the job's ``--verbose`` and ``--log-level``,
    once the run's storage took a probe write; the log is published when the command ends."""
    check_storage(layout.root, *(folder for _, folder in layout.folders))
    layout.root.mkdir(parents=True, exist_ok=True)
    try:
        with console(layout.log, verbose=args.verbose, level=args.log_level) as terminal:
            yield terminal
    finally:
        if layout.log.is_file():
            storage.publish(layout.log)
