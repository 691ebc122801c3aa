"""Data stage: fetch the real datasets, or prepare (parse, split, cache) what the config names.

Laptop:        emprl data prepare [--preset local] [data.source=local data.ed_path=DIR data.epitome_path=DIR]
               emprl data download --dest data/
               emprl data download --dest s3://bucket/data
                   (then data.ed_path=s3://bucket/data/empatheticdialogues data.epitome_path=s3://bucket/data/epitome)
Cluster job:   ray job submit --working-dir . -- python -m jobs.cli.data prepare --preset paper
Sweep:         not swept; `emprl tune` reuses the prepared cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from jobs.launch.console import setup_logging
from jobs.launch.options import add_config_args, config_from_args, run_module, user_path
from pipeline import storage
from pipeline.data import (
    ED_URL,
    EPITOME_BASE_URL,
    EPITOME_SHA256,
    DataError,
    DownloadError,
    PreparedData,
    download_all,
    prepare_datasets,
)

logger = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("data", help="download or prepare the datasets")
    actions = parser.add_subparsers(dest="action", required=True)

    prep = actions.add_parser("prepare", help="parse, split and cache the datasets of the config")
    add_config_args(prep)
    prep.add_argument("--refresh", action="store_true", help="ignore the cache and rebuild")
    prep.set_defaults(func=prepare_main)

    dl = actions.add_parser("download", help="fetch EmpatheticDialogues and EPITOME and verify checksums")
    dl.add_argument(
        "--dest",
        type=user_path,
        default=user_path("data"),
        help="folder to write into, or an s3:// / gs:// URI to publish the files to (default: data/)",
    )
    dl.add_argument("--ed-url", default=ED_URL, help="EmpatheticDialogues tarball URL (a mirror)")
    dl.add_argument("--ed-sha256", default=None, help="expected sha256 of the tarball at --ed-url")
    dl.add_argument("--epitome-base-url", default=EPITOME_BASE_URL, help="folder URL of the EPITOME CSVs")
    dl.add_argument(
        "--epitome-sha256",
        nargs="*",
        default=None,
        metavar="FILE=SHA256",
        help="expected checksums of a mirror's EPITOME files",
    )
    dl.add_argument("--timeout", type=float, default=15.0, help="seconds before a connection attempt fails")
    dl.add_argument("--log-level", default="INFO")
    dl.set_defaults(func=download_main)


def prepare(args: argparse.Namespace) -> PreparedData:
    cfg = config_from_args(args)
    try:
        return prepare_datasets(cfg.data, refresh=args.refresh)
    except DataError as exc:
        raise SystemExit(f"data error: {exc}") from None


def prepare_main(args: argparse.Namespace) -> None:
    setup_logging(args.log_level)
    prepared = prepare(args)
    logger.info("prepared datasets in %s", prepared.path)  # the cache: node-local
    json.dump(prepared.stats, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def download_main(args: argparse.Namespace) -> None:
    setup_logging(args.log_level)
    kwargs: dict[str, Any] = {"ed_url": args.ed_url, "epitome_base_url": args.epitome_base_url}
    kwargs["timeout"] = args.timeout
    if args.ed_sha256:
        kwargs["ed_sha256"] = args.ed_sha256
    if args.epitome_sha256:
        # a mirror's checksums replace the official ones file by file; unnamed files keep theirs
        kwargs["epitome_sha256"] = {**EPITOME_SHA256, **dict(i.split("=", 1) for i in args.epitome_sha256)}
    try:
        paths = download_all(args.dest, **kwargs)
    except (DownloadError, DataError) as exc:
        raise SystemExit(f"download failed: {exc}") from None
    ed, epitome = (storage.display(paths[key]) for key in ("ed_path", "epitome_path"))
    sys.stdout.write(f"data.source=local data.ed_path={ed} data.epitome_path={epitome}\n")


def main(argv: list[str] | None = None) -> None:
    run_module("data", add_parser, argv)


if __name__ == "__main__":
    main()
