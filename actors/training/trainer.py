"""Ray Train's ``TorchTrainer`` with a controller that never outlives its fit (:class:`OwnedTorchTrainer`).

Every fit of the training stages (:func:`actors.training.harness.fit`) runs one; concurrent fits
form a :class:`FitGroup`, so that one failure or Ctrl-C ends them all. Split from the harness as
its own concern: the lifetime of Ray Train's controller process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import psutil
import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError
from ray.train import Result
from ray.train.torch import TorchTrainer

from actors.cluster.session import STORAGE_ENV, STORAGE_ENV_PREFIXES

logger = logging.getLogger(__name__)

CONTROLLER_TITLE = "ray::TrainController"
"""Process title of Ray Train's controller actor."""
ABORT_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0


class TrainStageError(RuntimeError):
    """A Ray Train stage failed after its retries (its checkpoints stay for the next run)."""


_thread = threading.local()


class FitGroup:
    """The controllers of concurrent fits (:func:`~actors.training.harness.fit_concurrently`), so that
    one stop ends them all; a thread joins by calling :meth:`enter`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, ActorHandle[Any]] = {}
        self._stopped = False

    def enter(self) -> None:
        """Make this thread's fits members of the group."""
        _thread.group = self

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

    The controller gets the driver's object-store settings (``AWS_*``, ``EMPRL_SCRATCH``, ...: the
    ones :func:`~actors.cluster.session.worker_env` forwards): it deletes old checkpoints and writes
    its run snapshot in the bucket of a URI run folder, and Ray ships it the storage filesystem
    without credentials, so on a cluster started before those were set it would have none.
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
        env_vars.update(storage_env())
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


def storage_env() -> dict[str, str]:
    """This process's variables that say how to reach the object store and where the node's scratch is."""
    return {
        key: value
        for key, value in os.environ.items()
        if key in STORAGE_ENV or key.startswith(STORAGE_ENV_PREFIXES)
    }


def _state_api_served() -> bool:
    """Whether the cluster runs the dashboard, whose address it then publishes (it serves the State API)."""
    from ray._private.services import get_webui_url_from_internal_kv

    return bool(get_webui_url_from_internal_kv())  # type: ignore[no-untyped-call]


@contextmanager
def _owned(controller: ActorHandle[Any]) -> Iterator[None]:
    """Run the body with ``controller`` live; afterwards (also on error or interrupt) end it."""
    group: FitGroup | None = getattr(_thread, "group", None)
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
