"""Ray Train harness of the training stages (identifier training, SFT): resume, report, fit, export.

Driver side: :func:`newest_checkpoint` finds where an earlier run of the job stopped, :func:`fit`
runs one ``TorchTrainer`` (:func:`fit_stage` a stage's, :func:`fit_concurrently` several) and
:func:`export` copies a folder of the final checkpoint into the stage output atomically. Worker
side: :func:`restored` opens the checkpoint to resume from and :func:`report` writes one. A fit's
controller actor, and with it its Train workers, ends when the fit returns, raises or is
interrupted (:class:`~actors.training.trainer.OwnedTorchTrainer`).

A stage folder may mirror an object-store URI (:mod:`pipeline.storage`): Ray Train then keeps the
run's checkpoints in the bucket, a checkpoint folder is named by its mirror path
(:func:`checkpoint_folder`) and read through the store (:func:`read_state`, the stages' ``order``
rules), a worker on any node opens one through Ray (:func:`checkpoint_at`), and an export is
published by the driver that made it. For a plain local folder all of this is the local file system.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict, TypeVar, Unpack

import pyarrow.fs as pafs
import ray
import ray.train
from ray.exceptions import RayActorError
from ray.train import Checkpoint, Result, TrainingFailedError

from actors.cluster.session import torch_trainer
from actors.training.engines import TrainEngine
from actors.training.trainer import FitGroup, OwnedTorchTrainer, TrainStageError
from pipeline import storage
from pipeline.config import ResourcesConfig

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
"""The stage's JSON state in a checkpoint; rank 0 writes it last, so a checkpoint without it is incomplete."""
RESUME_FROM = "resume_from"
"""Key of the loop config that names the checkpoint on storage a new run of the job resumes from."""

T = TypeVar("T")

FILESYSTEM_SCHEMES = {"s3": "s3", "gcs": "gs"}
"""URI scheme of a checkpoint's ``pyarrow`` filesystem (by ``type_name``)."""


# --- where checkpoints are ------------------------------------------------------------------------


def checkpoint_folder(checkpoint: Checkpoint) -> Path:
    """``checkpoint``'s folder as this project names folders: its local path, or the mirror path of
    its URI when Ray Train keeps it in a bucket (read it there with :mod:`pipeline.storage`'s readers,
    or download it with ``checkpoint.as_directory()``).

    Raises:
        ValueError: the checkpoint is on a file system other than a local one, S3 or GCS.
    """
    fs = checkpoint.filesystem
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return Path(checkpoint.path)
    scheme = FILESYSTEM_SCHEMES.get(fs.type_name)
    if scheme is None:
        raise ValueError(
            f"checkpoint {checkpoint.path} is on a {fs.type_name!r} file system, which the training stages "
            "cannot name. Fix: use a local or mounted folder, s3:// or gs:// as the run folder."
        )
    return storage.local_path(f"{scheme}://{checkpoint.path}")


def checkpoint_at(folder: Path) -> Checkpoint:
    """The Ray checkpoint in ``folder``: a local folder, or, for a mirror path, the folder in its
    bucket (``as_directory()`` downloads it on whatever node calls it)."""
    path, filesystem = storage.ray_storage(folder)
    return Checkpoint(path, filesystem=filesystem)


# --- worker side ---------------------------------------------------------------------------------


@contextmanager
def restored(config: Mapping[str, Any], order: Callable[[Path], Any]) -> Iterator[Path | None]:
    """The checkpoint folder this worker resumes from, or ``None`` for a fresh start.

    After a worker failure Ray Train hands back the run's latest checkpoint; a new run of the job
    starts from the one the driver found on storage (``config[RESUME_FROM]``, a path or a URI).
    Ray Train also hands a new run the latest checkpoint its own records name, which misses one
    whose worker died while reporting it, so the newer of the two by the stage's ``order`` rule
    (:func:`newest_checkpoint`) is taken. A checkpoint in a bucket is downloaded to this node.
    """
    checkpoint = ray.train.get_checkpoint()
    stored = storage.local_path(config[RESUME_FROM]) if config.get(RESUME_FROM) else None
    if stored and (checkpoint is None or _older(checkpoint_folder(checkpoint), stored, order)):
        checkpoint = checkpoint_at(stored)
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def _older(candidate: Path, stored: Path, order: Callable[[Path], Any]) -> bool:
    """Whether a checkpoint Ray Train handed back is incomplete or older than ``stored`` (both local
    folders, or mirror paths read through the store); a local path that is no folder is taken as it is."""
    if storage.uri_of(candidate) is None and not candidate.is_dir():
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
    """The :data:`STATE_FILE` of a checkpoint folder (for a mirror path: read from its bucket), or
    ``None`` when it is missing or cut short."""
    try:
        text = storage.read_text(folder / STATE_FILE)
        state = json.loads(text) if text is not None else None
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def newest_checkpoint(run_dir: Path, order: Callable[[Path], Any]) -> Path | None:
    """The newest complete checkpoint folder (``checkpoint_*``) of a Ray Train run folder, if any;
    for a mirror path the checkpoints in its bucket, named by their mirror paths.

    ``order(folder)`` is the stage's rule: a sortable key (the largest is the newest), or ``None``
    for an incomplete checkpoint, which is never resumed from.
    """
    ranked = []
    if storage.uri_of(run_dir) is None:
        for folder in sorted(run_dir.glob("checkpoint_*")):
            key = order(folder) if folder.is_dir() else None
            if key is not None:
                ranked.append((key, folder))
    else:
        for name in storage.list_names(run_dir):
            key = order(run_dir / name) if name.startswith("checkpoint_") else None
            if key is not None:
                ranked.append((key, run_dir / name))
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


def export(checkpoint: Checkpoint, folder: str, target: Path, *, publish: bool = True) -> None:
    """Copy ``folder`` of ``checkpoint`` (downloaded first when it is in a bucket) to ``target``
    (:func:`replace_folder`), then publish ``target`` when it mirrors a URI; with ``publish=False``
    the caller adds its own files and publishes the folder."""
    with checkpoint.as_directory() as root:
        replace_folder(Path(root) / folder, target)
    if publish:
        storage.publish(target)


# --- driver side: fit ---------------------------------------------------------------------------


class RunOptions(TypedDict):
    """How :func:`fit` runs a stage's Ray Train run (see :func:`~actors.cluster.session.torch_trainer`)."""

    name: str
    """The run's folder under ``storage``."""
    storage: Path
    num_workers: int
    res: ResourcesConfig
    max_failures: int
    """Worker restarts from the latest checkpoint before the stage fails."""
    keep_checkpoints: int


def fit(
    stage: str,
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    *,
    resume_from: Path | None,
    **run: Unpack[RunOptions],
) -> Result:
    """Run the Ray Train run ``storage/name`` of ``stage`` (from ``resume_from`` when given).

    Workers get ``loop_config`` plus :data:`RESUME_FROM` (the URI of a mirror path). Failed workers are restarted from the
    latest checkpoint ``max_failures`` times; after that :class:`TrainStageError` names the stage.
    Whatever happens, the run's controller and workers are gone when this returns or raises.
    """
    config = {**loop_config, RESUME_FROM: storage.display(resume_from) if resume_from else None}
    trainer = torch_trainer(loop, config, trainer_cls=OwnedTorchTrainer, **run)
    run_dir, max_failures = run["storage"] / run["name"], run["max_failures"]
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        raise _failed(stage, run_dir, max_failures, exc) from exc
    except RayActorError as exc:  # the controller itself died (or was aborted by a sibling's failure)
        raise TrainStageError(f"{stage}: its Ray Train controller ended early: {exc}") from exc
    if result.error is not None:
        raise _failed(stage, run_dir, max_failures, result.error) from result.error
    return result


class _StageConfig(Protocol):
    @property
    def num_workers(self) -> int: ...


class StageSpec(Protocol):
    """What a stage ships to each of its workers (``TrainSpec``, ``SFTSpec``): its settings name the
    run's worker count."""

    @property
    def cfg(self) -> _StageConfig: ...


@dataclass(frozen=True)
class StageResult:
    """The end of a training stage's run: its final checkpoint, report and :data:`STATE_FILE`."""

    checkpoint: Checkpoint
    metrics: dict[str, Any]
    state: dict[str, Any]


SPEC = "spec"
"""The key of a stage's spec in its workers' config, as bytes (:func:`stage_spec` reads it)."""


def loop_config(spec: StageSpec) -> dict[str, Any]:
    """The workers' config of a stage run (:func:`fit_stage`): ``spec`` pickled (see :func:`stage_spec`)."""
    return {SPEC: pickle.dumps(spec)}


def stage_spec(config: Mapping[str, Any], kind: type[T]) -> T:
    """The ``kind`` spec :func:`fit_stage` shipped in a worker's ``config``.

    It travels pickled: Ray Train's controller unpickles the whole loop config when it starts, and the
    specs' classes (``TrainSpec``, ``SFTSpec``) import torch's and transformers' model stack, which took a
    controller from 3.7 to 6.9 CPU seconds (``PYTHONPROFILEIMPORTTIME=1`` in its worker log; docs/performance.md).
    """
    spec = pickle.loads(config[SPEC])
    if not isinstance(spec, kind):
        raise TypeError(f"config[{SPEC!r}] holds a {type(spec).__name__}, not a {kind.__name__}")
    return spec


def fit_stage(
    stage: str,
    loop: Callable[[dict[str, Any]], None],
    spec: StageSpec,
    run_dir: Path,
    *,
    resume_from: Path | None,
    res: ResourcesConfig,
    max_failures: int,
    keep_checkpoints: int,
) -> StageResult:
    """:func:`fit` of a training stage: the run ``run_dir`` of ``spec.cfg.num_workers`` workers, each
    getting ``spec`` (:func:`stage_spec` reads it), that ends with a report marked ``final``."""
    result = fit(
        stage,
        loop,
        loop_config(spec),
        resume_from=resume_from,
        name=run_dir.name,
        storage=run_dir.parent,
        num_workers=spec.cfg.num_workers,
        res=res,
        max_failures=max_failures,
        keep_checkpoints=keep_checkpoints,
    )
    assert result.checkpoint is not None and result.metrics is not None and result.metrics.get("final")
    state = read_state(checkpoint_folder(result.checkpoint))
    assert state is not None, "the final checkpoint holds the state"
    return StageResult(result.checkpoint, result.metrics, state)


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
    group = FitGroup()
    pool = ThreadPoolExecutor(max_workers=parallel, initializer=group.enter)
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
