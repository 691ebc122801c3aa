"""Shared by every integration test of the session: one local Ray cluster on 127.0.0.1, the demo data
prepared once, and two tiny run folders (models and labels) built once. The folders are read-only: a test
links them into its own run folder (``ppo_inputs.linked_run``) or copies them before changing anything."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ppo_inputs import build_run_dir, linked_run

import jobs  # noqa: F401  (loopback-only Ray, set before Ray is imported)
from pipeline.config import DataConfig
from pipeline.data import PreparedData, prepare_datasets
from pipeline.layout import RunLayout

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A 2-CPU local cluster with a short temp dir (Unix socket paths must stay short)."""
    import ray

    from actors.cluster.session import init_ray
    from pipeline.config import ResourcesConfig

    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    init_ray(ResourcesConfig(num_cpus=2, object_store_memory=300_000_000))
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data cache holding the demo data, prepared once (``data.cache_dir`` of the tiny run folders)."""
    cache = tmp_path_factory.mktemp("demo_cache")
    prepare_datasets(DataConfig(cache_dir=str(cache)))
    return cache


@pytest.fixture(scope="session")
def demo(demo_cache: Path) -> PreparedData:
    """The demo data with default settings."""
    return prepare_datasets(DataConfig(cache_dir=str(demo_cache)))


@pytest.fixture(scope="session")
def ppo_run(tmp_path_factory: pytest.TempPathFactory, demo_cache: Path) -> Path:
    """A run folder ``…/run`` with tiny random models and 64 labelled training rows (PPO's and the
    services' inputs)."""
    return build_run_dir(tmp_path_factory.mktemp("ppo_run") / "run", demo_cache)


@pytest.fixture(scope="session")
def sweep_run(tmp_path_factory: pytest.TempPathFactory, demo_cache: Path) -> Path:
    """A run folder ``…/run`` with tiny random models and 32 labelled rows, as the train and the valid
    split (the inputs of sweeps, stages and evaluation)."""
    return build_run_dir(tmp_path_factory.mktemp("sweep_run") / "run", demo_cache, rows=32, valid=True)


@pytest.fixture
def sweep_layout(sweep_run: Path, tmp_path: Path) -> RunLayout:
    """A new run folder in the test's ``tmp_path`` on :func:`sweep_run`'s models and labels (linked)."""
    return linked_run(sweep_run, tmp_path)
