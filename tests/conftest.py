"""Shared fixtures: the read-only real datasets in ``shared/data`` (skipped when absent) and a real S3
server on loopback (``s3_server``, ``s3_bucket``)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3 import S3Server, s3_env

from pipeline.config import DataConfig
from pipeline.data import EDSplit, EpitomeData, parse_ed_split, read_epitome

ROOT = Path(__file__).resolve().parents[1]

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # started in the background by a shell without job control (`cmd &` in a script, `nohup`), pytest and
    # every process it starts would inherit SIGINT ignored: the tests of what Ctrl-C does would see nothing
    signal.signal(signal.SIGINT, signal.default_int_handler)


MULTI_NODE_MODULES = ("test_nodes", "test_cluster_storage", "test_node_loss")
"""Modules that start several Ray nodes each: with ``make test``'s two workers they run one after the other
on one worker (two such clusters side by side on two cores would starve each other's health checks)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with slow tests first (stable otherwise): with ``make test``'s two workers the long ones
    start at once and the short ones fill in around them."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow") and item.module}
    items.sort(key=lambda item: 0 if item.module and item.module.__name__ in slow_modules else 1)


@pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist runs without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``make test``'s scheduler (``-n 2 --dist loadfile``): each module whole on one worker (its fixtures and
    clusters with it), the multi-node modules all on the same one, one after the other."""
    from xdist.scheduler import LoadFileScheduling

    class ModuleScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "multi-node modules" if Path(module).stem in MULTI_NODE_MODULES else module

    return ModuleScheduling(config, log)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$EMPRL_SHARED_DATA`` or ``<repo>/../shared/data``: ``empatheticdialogues/`` and ``epitome/``."""
    path = Path(os.environ.get("EMPRL_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (path / "empatheticdialogues" / "train.csv").is_file() or not (path / "epitome").is_dir():
        pytest.skip(f"real datasets not found in {path} (set EMPRL_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def real_ed(shared_data: Path) -> dict[str, EDSplit]:
    """The real ED train and valid splits, parsed once per session with default settings."""
    return {
        s: parse_ed_split(shared_data / "empatheticdialogues" / f"{s}.csv", DataConfig())
        for s in ("train", "valid")
    }


@pytest.fixture(scope="session")
def real_epitome(shared_data: Path) -> EpitomeData:
    """The real EPITOME pairs, joined and deduplicated once per session."""
    return read_epitome(shared_data / "epitome")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 protocol server (moto) on 127.0.0.1 for the whole session."""
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh bucket's URI (``s3://emprl-…``), this process pointed at the server with its own scratch root."""
    return s3_env(s3_server, monkeypatch, tmp_path / "scratch")
