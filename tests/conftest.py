"""Shared fixtures: the read-only real datasets in ``shared/data`` (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.config import DataConfig
from pipeline.data import EDSplit, EpitomeData, parse_ed_split, read_epitome

ROOT = Path(__file__).resolve().parents[1]


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
