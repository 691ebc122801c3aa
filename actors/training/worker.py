"""Worker side of the Ray Train stages (identifier training, SFT): what every rank sets up alike.

:func:`join` gives a rank its place in the run (rank, world size, device); :func:`build_engine`
wraps the stage's model in the engine its config names, sized to the rank's share of the global
batch; :func:`resume` restores that engine and the stage's JSON state from the checkpoint the run
resumes from (:func:`actors.training.harness.restored`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import ray.train
import ray.train.torch
import torch
from torch import nn

from actors.training import harness
from actors.training.engines import TrainEngine, make_engine
from pipeline.config import EngineConfig, OptimizerConfig


class StageConfig(Protocol):
    """The settings every training stage has (``IdentifiersConfig``, ``SFTConfig``)."""

    @property
    def engine(self) -> EngineConfig: ...

    @property
    def optimizer(self) -> OptimizerConfig: ...

    @property
    def epochs(self) -> int: ...

    @property
    def batch_size(self) -> int:
        """Global batch size, split evenly across the run's workers."""
        ...


@dataclass(frozen=True)
class Rank:
    """A worker's place in its Ray Train run."""

    rank: int
    world: int
    """Data-parallel workers of the run."""
    device: torch.device


def join(torch_threads: int) -> Rank:
    """This Train worker's :class:`Rank`, after limiting torch to ``torch_threads`` threads."""
    torch.set_num_threads(torch_threads)
    ctx = ray.train.get_context()
    return Rank(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())


def build_engine(
    cfg: StageConfig,
    model: nn.Module,
    at: Rank,
    *,
    steps_per_epoch: int,
    schedule: Callable[[int], float] | None = None,
    partition_aware: bool = False,
) -> TrainEngine:
    """``model``, moved to ``at.device``, in the engine ``cfg.engine`` names for ``cfg.epochs`` epochs
    of ``steps_per_epoch`` updates, each rank taking ``cfg.batch_size // world`` examples of every
    batch (``schedule`` and ``partition_aware``: see :func:`~actors.training.engines.make_engine`)."""
    return make_engine(
        cfg.engine,
        cfg.optimizer,
        model.to(at.device),
        total_steps=steps_per_epoch * cfg.epochs,
        micro_batch=cfg.batch_size // at.world,
        world_size=at.world,
        schedule=schedule,
        partition_aware=partition_aware,
    )


@contextmanager
def resume(
    config: Mapping[str, Any], order: Callable[[Path], Any], engine: TrainEngine
) -> Iterator[tuple[Path, dict[str, Any]] | None]:
    """``(folder, state)`` of the checkpoint this worker resumes from, with ``engine`` restored from
    it and the stage's :data:`~actors.training.harness.STATE_FILE` read; ``None`` for a fresh start.
    The folder is open for the stage's own files while the context lasts."""
    with harness.restored(config, order) as folder:
        if folder is None:
            yield None
            return
        engine.load(folder)
        yield folder, json.loads((folder / harness.STATE_FILE).read_text())
