"""Ray cluster bring-up: join a running cluster or start a local one on 127.0.0.1.

Owns the process-wide Ray connection for a job. Consumes the ``resources`` config section;
every actor and task it starts inherits the thread limits so 2-core machines do not
oversubscribe.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from actors.cluster.worker_setup import WORKER_SETUP_HOOK
from pipeline.config import ResourcesConfig
from pipeline.storage import ray_storage

logger = logging.getLogger(__name__)


MALLOC_TUNING = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
}
"""glibc malloc settings of every worker process. By default glibc gives each large tensor (from
128 KiB, a threshold that moves) fresh pages from ``mmap`` and returns them on free, so every
forward and backward pass page-faults on its temporaries again (~130 000 faults per d256 PPO update
on CPU). A fixed mmap threshold of 32 MiB (glibc's maximum) serves them from the heap, and a trim
threshold of 256 MiB keeps freed heap memory for the next pass instead of returning it at once: the
d256 update runs 5 % faster, 9 % with the CPU's eager attention (``benchmarks/cpu_settings.py``), for
up to 256 MiB more resident memory per process. Set either variable in the driver's environment to override it; other
allocators (jemalloc, tcmalloc via ``LD_PRELOAD``) ignore them."""


STORAGE_ENV = ("EMPRL_SCRATCH", "GOOGLE_APPLICATION_CREDENTIALS")
"""Variables that say where a node's scratch folder is and how to reach the object store; with
:data:`STORAGE_ENV_PREFIXES` they travel to every actor in the runtime environment (never into a
config, a run folder or a log). Nodes with an instance role or service account need none of them."""
STORAGE_ENV_PREFIXES = ("AWS_",)


def worker_env(res: ResourcesConfig) -> dict[str, str]:
    """Environment every Ray worker process gets: thread caps and quiet, offline-safe libraries."""
    threads = str(res.torch_threads)
    env = {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    for key in ("HF_HUB_OFFLINE", "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "HF_HOME", *STORAGE_ENV):
        if key in os.environ:
            env[key] = os.environ[key]
    for key in os.environ:  # the object store's endpoint, region, profile and keys, wherever they are set
        if key.startswith(STORAGE_ENV_PREFIXES):
            env[key] = os.environ[key]
    env.update(MALLOC_TUNING)
    for key in MALLOC_TUNING:  # the caller's own settings win
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def worker_runtime_env(res: ResourcesConfig) -> dict[str, Any]:
    """The runtime environment of every actor, task and Train worker: :func:`worker_env` and
    :func:`~actors.cluster.worker_setup.worker_logging`."""
    return {"env_vars": worker_env(res), "worker_process_setup_hook": WORKER_SETUP_HOOK}


def init_ray(res: ResourcesConfig) -> bool:
    """Connect to ``res.address`` (or ``RAY_ADDRESS``) or start a local cluster on loopback.

    Returns True when this call connected (the caller then owns :func:`shutdown_ray`); an
    existing connection is reused and False returned.
    """
    started = not ray.is_initialized()
    if started:
        runtime_env = worker_runtime_env(res)
        address = res.address or os.environ.get("RAY_ADDRESS")
        if address:
            logger.info("joining Ray cluster at %s", address)
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        else:
            if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
                raise RuntimeError(
                    "a local Ray cluster must bind to 127.0.0.1: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
                    "before Ray is imported (importing the `jobs` package does this)"
                )
            logger.info("starting a local Ray cluster on 127.0.0.1 (%s CPUs)", res.num_cpus or "all")
            ray.init(
                num_cpus=res.num_cpus,
                num_gpus=res.num_gpus if res.use_gpu else 0,
                object_store_memory=res.object_store_memory,
                include_dashboard=False,
                runtime_env=runtime_env,
                log_to_driver=True,
            )
    stop_on_sigterm()
    resources: dict[str, Any] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    logger.info("Ray resources: %s", {k: v for k, v in resources.items() if not k.startswith("node:")})
    return started


class _SigtermAsCtrlC:
    """SIGTERM raises :class:`KeyboardInterrupt` in the main thread, once: the path of Ctrl-C.

    ``docker stop``, Kubernetes, systemd and ``ray job stop`` stop a process with SIGTERM. Python's
    default ends it at once and ``ray.init`` installs ``sys.exit``; either way a stage would not stop
    at a safe point. With this handler a job stops exactly as on Ctrl-C: the iteration in progress is
    abandoned (a checkpoint is complete only once its marker is written), Serve and a local cluster
    this process started are shut down, nothing is left running. A second SIGTERM while that happens
    is ignored (the sender's own SIGKILL deadline still applies)."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.received:
            logger.warning("SIGTERM again: already stopping")
            return
        self.received = True
        logger.warning("SIGTERM: stopping as on Ctrl-C")
        raise KeyboardInterrupt("SIGTERM")


def stop_on_sigterm() -> None:
    """Make SIGTERM take Ctrl-C's path in this process (see :class:`_SigtermAsCtrlC`); called by every
    command at start and again after ``ray.init`` (which installs its own handler). Only the main thread
    can install a handler: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if not isinstance(current, _SigtermAsCtrlC):
        signal.signal(signal.SIGTERM, _SigtermAsCtrlC())


def shutdown_ray() -> None:
    """Disconnect (and stop a local cluster this process started)."""
    if ray.is_initialized():
        ray.shutdown()


@contextmanager
def ray_session(res: ResourcesConfig) -> Iterator[None]:
    """:func:`init_ray` for the duration of a job; on exit (normal, error or Ctrl-C) a connection this
    call opened is closed and a local cluster it started is stopped with every process it ran."""
    owns = init_ray(res)
    try:
        yield
    finally:
        if owns:
            shutdown_ray()


def torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    *,
    name: str,
    storage: Path,
    num_workers: int,
    res: ResourcesConfig,
    max_failures: int,
    keep_checkpoints: int,
    trainer_cls: type[TorchTrainer] = TorchTrainer,
) -> TorchTrainer:
    """A Ray Train run of ``num_workers`` ranks placed with ``res.trainer_cpus`` CPUs (or a GPU) each.

    Worker failures are retried ``max_failures`` times from the latest checkpoint; the last
    ``keep_checkpoints`` checkpoints are kept under ``storage/name`` (in the bucket when ``storage``
    mirrors a URI, so workers on every node persist there). ``trainer_cls`` is
    ``TorchTrainer`` or a subclass (the training stages use :mod:`actors.training.harness`'s).
    """
    storage_path, storage_filesystem = ray_storage(storage)
    return trainer_cls(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=res.use_gpu,
            resources_per_worker={"CPU": res.trainer_cpus, **res.role_node_resources.get("trainer", {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            worker_runtime_env=worker_runtime_env(res),  # type: ignore[call-arg]  # V2 RunConfig
        ),
    )
