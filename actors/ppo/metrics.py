"""What a PPO run reports: per-phase timings, the metrics log, and each iteration's report to sinks.

:class:`PhaseTimer` times an iteration's phases (``time/<phase>``); :class:`MetricsLog` appends each
iteration's flat metrics row to ``ppo/metrics.jsonl`` and TensorBoard, and on resume drops the rows
a crashed attempt logged after its checkpoint; sinks receive an :class:`IterationReport`. In a run
folder that mirrors an object store the log is uploaded after every row (one small object, replaced
whole) and read back from the store on resume, so a resume on a fresh node continues it exactly;
the TensorBoard events are uploaded at every checkpoint and at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage


@dataclass(frozen=True)
class IterationReport:
    """What a sink receives after each iteration: its metrics row, and the checkpoint it wrote."""

    iteration: int
    metrics: dict[str, float]
    checkpoint: Path | None
    """The checkpoint folder written after this iteration, or ``None`` when none was."""


Sink = Callable[[IterationReport], None]
"""Receives every iteration's :class:`IterationReport` (a Tune trial reports through one)."""


class PhaseTimer:
    """Wall seconds per named phase of one iteration (``time/<phase>``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{phase}"] = time.perf_counter() - start


class MetricsLog:
    """Metrics rows as JSON lines in ``path`` and as TensorBoard scalars in ``tensorboard``."""

    def __init__(self, path: Path, tensorboard: Path) -> None:
        self.path, self.tensorboard = path, tensorboard
        self.writer: Any = None

    def resume_at(self, iteration: int) -> None:
        """Continue after ``iteration``: drop the rows (and TensorBoard events) logged after it."""
        from torch.utils.tensorboard import SummaryWriter

        storage.fetch(self.path)  # the store's copy, which a run on another node may have written
        if self.path.is_file():
            rows = [line for line in self.path.read_text().splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line)["iteration"] <= iteration]
            if len(kept) < len(rows):
                tmp = self.path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(line + "\n" for line in kept))
                tmp.replace(self.path)
                storage.upload(self.path)
        self.close()
        self.writer = SummaryWriter(str(self.tensorboard), purge_step=iteration + 1)

    def append(self, row: dict[str, float]) -> None:
        """Log one iteration's row (its namespaced, finite values also to TensorBoard)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        storage.upload(self.path)  # a mirror path: the whole (small) log as one object; else nothing
        for key, value in row.items():
            if "/" in key and np.isfinite(value):
                self.writer.add_scalar(key, value, row["iteration"])
        self.writer.flush()

    def read(self) -> list[dict[str, float]]:
        """Every logged iteration's metrics row, in order."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def publish(self) -> None:
        """Upload the TensorBoard events written so far when the folder mirrors an object store (the
        JSON log is uploaded at every :meth:`append`)."""
        if self.writer is not None and storage.uri_of(self.tensorboard) is not None:
            self.writer.flush()
            storage.upload(self.tensorboard)

    def close(self) -> None:
        """Close the TensorBoard writer (and upload its events, see :meth:`publish`)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            storage.upload(self.tensorboard)
