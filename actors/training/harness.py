"""Ray Train harness of the training stages (identifier training, SFT): resume, report, fit, export.

Driver side: :func:`newest_checkpoint` finds where an earlier run of the job stopped, :func:`fit`
runs one ``TorchTrainer`` (:func:`fit_concurrently` several) and :func:`export` copies a folder of
the final checkpoint into the stage output atomically. Worker side: :func:`restored` opens the
checkpoint to resume from and :func:`report` writes one. A fit's controller actor, and with it its
Train workers, ends when the fit returns, raises or is interrupted (:class:`OwnedTorchTrainer`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import psutil
import ray
import ray.train
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError
from ray.train import Checkpoint, Result, TrainingFailedError
from ray.train.torch import TorchTrainer

from actors.cluster.session import torch_trainer
from actors.training.engines import TrainEngine
from pipeline.config import ResourcesConfig

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
"""The stage's JSON state in a checkpoint; rank 0 writes it last, so a checkpoint without it is incomplete."""
RESUME_FROM = "resume_from"
"""Key of the loop config that names the checkpoint on storage a new run of the job resumes from."""
CONTROLLER_TITLE = "ray::TrainController"
"""Process title of Ray Train's controller actor."""
ABORT_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0

T = TypeVar("T")


class TrainStageError(RuntimeError):
    """A Ray Train stage failed after its retries (its checkpoints stay for the next run)."""


# --- worker side ---------------------------------------------------------------------------------


@contextmanager
def restored(config: Mapping[str, Any], order: Callable[[Path], Any]) -> Iterator[Path | None]:
    """The checkpoint folder this worker resumes from, or ``None`` for a fresh start.

    After a worker failure Ray Train hands back the run's latest checkpoint; a new run of the job
    starts from the one the driver found on storage (``config[RESUME_FROM]``). Ray Train also hands
    a new run the latest checkpoint its own records name, which misses one whose worker died while
    reporting it, so the newer of the two by the stage's ``order`` rule (:func:`newest_checkpoint`)
    is taken.
    """
    checkpoint = ray.train.get_checkpoint()
    stored = config.get(RESUME_FROM)
    if stored and (checkpoint is None or _older(Path(checkpoint.path), Path(stored), order)):
        checkpoint = Checkpoint(stored)
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def _older(candidate: Path, stored: Path, order: Callable[[Path], Any]) -> bool:
    """Whether a checkpoint Ray Train handed back is incomplete or older than ``stored``; one that
    is not a local folder (remote storage) is taken as it is."""
    if not candidate.is_dir():
        return False
    mine, theirs = order(candidate), order(stored)
    return mine is None or (theirs is not None and bool(mine < theirs))


def report(
    metrics: dict[str, Any],
    *,
    rank: int,
    state: dict[str, Any],
    engine: TrainEngine | None = None,
    write: Callable[[Path], None] | None = None,
) -> None:
    """Report ``metrics`` with a checkpoint (every rank calls it).

    The checkpoint holds ``engine``'s full training state (written by every rank that holds a part
    of it: all ranks under DeepSpeed, rank 0 under DDP), whatever ``write(folder)`` adds on this
    rank, and, last, rank 0's ``state`` as :data:`STATE_FILE`. A rank that wrote nothing reports no
    checkpoint; Ray Train merges the ranks' folders into one.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if engine is not None:
            engine.save(folder, rank=rank)
        if write is not None:
            write(folder)
        if rank == 0:
            (folder / STATE_FILE).write_text(json.dumps(state))
        has_files = any(folder.iterdir())
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if has_files else None)


# --- driver side: checkpoints on storage and export ---------------------------------------------


def read_state(folder: Path) -> dict[str, Any] | None:
    """The :data:`STATE_FILE` of a checkpoint folder, or ``None`` when it is missing or cut short."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def newest_checkpoint(run_dir: Path, order: Callable[[Path], Any]) -> Path | None:
    """The newest complete checkpoint folder (``checkpoint_*``) of a Ray Train run folder, if any.

    ``order(folder)`` is the stage's rule: a sortable key (the largest is the newest), or ``None``
    for an incomplete checkpoint, which is never resumed from.
    """
    ranked = []
    for folder in sorted(run_dir.glob("checkpoint_*")):
        key = order(folder) if folder.is_dir() else None
        if key is not None:
            ranked.append((key, folder))
    return max(ranked, key=lambda pair: pair[0])[1] if ranked else None


def replace_folder(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source`` without ever leaving half a folder at ``target``.

    The copy goes to a hidden sibling first and is renamed into place; an older ``target`` is
    renamed away just before and deleted after, so a crash leaves the old folder, the new one, or
    (between the two renames) none, with the old one kept as ``.<name>.old``.
    """
    partial = target.with_name(f".{target.name}.partial")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def export(checkpoint: Checkpoint, folder: str, target: Path) -> None:
    """Copy ``folder`` of ``checkpoint`` to ``target`` (:func:`replace_folder`)."""
    with checkpoint.as_directory() as root:
        replace_folder(Path(root) / folder, target)


# --- driver side: fit ---------------------------------------------------------------------------


def fit(
    stage: str,
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    *,
    storage: Path,
    name: str,
    resume_from: Path | None,
    num_workers: int,
    res: ResourcesConfig,
    max_failures: int,
    keep_checkpoints: int,
) -> Result:
    """Run the Ray Train run ``storage/name`` of ``stage`` (from ``resume_from`` when given).

    Workers get ``loop_config`` plus :data:`RESUME_FROM`. Failed workers are restarted from the
    latest checkpoint ``max_failures`` times; after that :class:`TrainStageError` names the stage.
    Whatever happens, the run's controller and workers are gone when this returns or raises.
    """
    trainer = torch_trainer(
        loop,
        {**loop_config, RESUME_FROM: str(resume_from) if resume_from else None},
        name=name,
        storage=storage,
        num_workers=num_workers,
        res=res,
        max_failures=max_failures,
        keep_checkpoints=keep_checkpoints,
        trainer_cls=OwnedTorchTrainer,
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        raise _failed(stage, storage / name, max_failures, exc) from exc
    except RayActorError as exc:  # the controller itself died (or was aborted by a sibling's failure)
        raise TrainStageError(f"{stage}: its Ray Train controller ended early: {exc}") from exc
    if result.error is not None:
        raise _failed(stage, storage / name, max_failures, result.error) from result.error
    return result


def _failed(stage: str, run_dir: Path, max_failures: int, error: BaseException) -> TrainStageError:
    return TrainStageError(
        f"{stage} failed after {max_failures} worker restart(s): {error}\n"
        f"Its checkpoints stay in {run_dir}. Fix the cause, then run the same command with the same "
        "run folder to resume from the last one."
    )


def fit_concurrently(calls: Mapping[str, Callable[[], T]], parallel: int) -> dict[str, T]:
    """``{key: call()}`` with up to ``parallel`` calls (each one or more :func:`fit`) at a time.

    When a call fails or the driver is interrupted (Ctrl-C), the runs still going are aborted,
    their controllers and workers end, and the first error is raised.
    """
    group = _Group()
    pool = ThreadPoolExecutor(max_workers=parallel, initializer=_enter_group, initargs=(group,))
    futures = {key: pool.submit(call) for key, call in calls.items()}
    try:
        done, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                future.result()  # raises it
        return {key: future.result() for key, future in futures.items()}
    except BaseException:
        for future in futures.values():
            future.cancel()
        group.stop()
        raise
    finally:
        pool.shutdown(wait=True)


_thread = threading.local()


def _enter_group(group: _Group) -> None:
    _thread.group = group


class _Group:
    """The controllers of the fits one :func:`fit_concurrently` runs, so that one stop ends them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, ActorHandle[Any]] = {}
        self._stopped = False

    def join(self, controller: ActorHandle[Any]) -> bool:
        with self._lock:
            if not self._stopped:
                self._live[id(controller)] = controller
            return not self._stopped

    def leave(self, controller: ActorHandle[Any]) -> None:
        with self._lock:
            self._live.pop(id(controller), None)

    def stop(self) -> None:
        """Abort every live run; each fit's own thread then ends its controller."""
        with self._lock:
            self._stopped = True
            live = list(self._live.values())
        for controller in live:
            controller.abort.remote()


class OwnedTorchTrainer(TorchTrainer):
    """A ``TorchTrainer`` whose controller actor never outlives :meth:`fit`.

    Ray 2.60 leaves the controller's end to its handle: ``fit`` in the main thread keeps the handle
    for the life of the process in a SIGINT handler (the controller stays up, idle), ``fit`` in any
    other thread drops it, and the actor then exits through ``__ray_terminate__`` and a normal
    interpreter shutdown, which can hang after the actor is already marked dead (ray-project/ray
    #59872 found this for Train workers); such a process has stopped watching its raylet, so not
    even the end of the cluster kills it. Here :meth:`fit` holds the handle, aborts the run on any
    error or interrupt (the controller stops its hooks, kills the workers and removes their
    placement group), then force-kills the controller, which exits at once, and waits until its
    process is gone.

    On a cluster without the dashboard, Ray's ``PlacementGroupCleaner`` is left out: it asks the
    State API (served by the dashboard) every second whether the controller is alive and logs
    "Failed to query Ray Train Controller actor state" each time the API is missing, and would ask
    the default dashboard address, which may be another cluster's. Its one job, removing the
    placement group of a controller that died without cleaning up, is done here by the abort on
    every error path; only a controller that crashes on its own leaves its group to the job's end.
    """

    def _create_default_callbacks(self) -> list[Any]:
        from ray.train.v2._internal.callbacks.placement_group_callback import (
            PlacementGroupCleanerCallback,
        )

        # Train V2 API: ray.train.torch.TorchTrainer is the V2 trainer at run time
        callbacks: list[Any] = super()._create_default_callbacks()  # type: ignore[misc]
        if _state_api_served():
            return callbacks
        return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Result:
        # Ray 2.60's DataParallelTrainer._initialize_and_run_controller, minus the SIGINT handler
        # that keeps the handle; the controller is placed on this node, as there
        from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
        from ray.train.v2._internal.constants import (
            DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
            get_env_vars_to_propagate,
        )
        from ray.train.v2._internal.execution.controller import TrainController

        env_vars = get_env_vars_to_propagate()
        env_vars.setdefault(
            RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE
        )
        node = ray.get_runtime_context().get_node_id()
        actor_cls: Any = ray.remote(
            num_cpus=0,
            label_selector={ray._raylet.RAY_NODE_ID_KEY: node},  # type: ignore[attr-defined]
            runtime_env={"env_vars": env_vars},
        )(TrainController)
        controller: ActorHandle[Any] = actor_cls.remote(**controller_init_kwargs)
        with _owned(controller):
            ray.get(controller.run.remote())
            result: Result = ray.get(controller.get_result.remote())
            return result


def _state_api_served() -> bool:
    """Whether the cluster runs the dashboard, whose address it then publishes (it serves the State API)."""
    from ray._private.services import get_webui_url_from_internal_kv

    return bool(get_webui_url_from_internal_kv())  # type: ignore[no-untyped-call]


@contextmanager
def _owned(controller: ActorHandle[Any]) -> Iterator[None]:
    """Run the body with ``controller`` live; afterwards (also on error or interrupt) end it."""
    group: _Group | None = getattr(_thread, "group", None)
    pid: int | None = None
    try:
        if group is not None and not group.join(controller):
            raise TrainStageError(
                "stopped before it started: another run of the stage failed or was interrupted"
            )
        pid = _local_pid(controller)
        yield
    except BaseException:
        _abort(controller)
        raise
    finally:
        if group is not None:
            group.leave(controller)
        _end(controller, pid)


def _whereabouts(_actor: Any) -> tuple[int, str]:
    return os.getpid(), ray.get_runtime_context().get_node_id()


def _local_pid(actor: ActorHandle[Any]) -> int | None:
    """The actor's process id when it runs on this node, else ``None``."""
    pid, node = cast(tuple[int, str], ray.get(actor.__ray_call__.remote(_whereabouts)))
    return int(pid) if node == ray.get_runtime_context().get_node_id() else None


def _abort(controller: ActorHandle[Any]) -> None:
    """Abort the run: the controller stops its hooks, kills the workers, removes their placement group, exits."""
    try:
        ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
    except (RayActorError, GetTimeoutError):
        pass  # exiting is how abort answers; a stuck controller is killed next
    except Exception:  # never mask the error that got us here
        logger.warning("could not abort the Ray Train controller", exc_info=True)


def _end(controller: ActorHandle[Any], pid: int | None) -> None:
    """Force-kill the controller (its process exits at once, no interpreter shutdown) and wait until it is gone."""
    try:
        ray.kill(controller)
    except Exception:
        logger.warning("could not kill the Ray Train controller", exc_info=True)
    if pid is not None:
        _wait_for_exit(pid, CONTROLLER_TITLE)


def _wait_for_exit(pid: int, title: str, timeout_s: float = EXIT_TIMEOUT_S) -> None:
    """Wait until process ``pid`` (while its command line still starts with ``title``) has exited;
    SIGKILL it after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE or not " ".join(process.cmdline()).startswith(title):
                return
            if time.monotonic() > deadline:
                logger.warning(
                    "%s (pid %d) still runs %.0f s after it was ended: killing it", title, pid, timeout_s
                )
                process.kill()
                return
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        time.sleep(0.1)
