"""One local Ray cluster on 127.0.0.1 shared by every integration test of the session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

import jobs  # noqa: F401  (loopback-only Ray, set before Ray is imported)

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
