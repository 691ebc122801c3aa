"""Progress lines for long work: count, rate and ETA, logged at most every few seconds.

Used by every stage instead of a terminal progress bar so the same lines appear in
``ray job logs`` and CI output.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

logger = logging.getLogger(__name__)

WORKER_MARK = "[emprl] "
"""Prefix of a Ray worker's progress lines and warnings: the job's terminal shows these, its log all lines."""

PROGRESS = {"progress": True}
"""``extra`` of every progress record: a job's terminal shows them whichever logger emits them."""


class Progress:
    """Log ``desc: done/total (pct) rate unit/s, ETA`` every ``every_s`` seconds, and at the end unless the
    work finished within ``every_s`` without a line (quick work stays quiet; ``every_s=0`` logs each step)."""

    def __init__(
        self,
        desc: str,
        total: int | None,
        *,
        unit: str = "it",
        every_s: float = 5.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.done = 0
        self._emitted = False
        self._log = log or logger
        self._start = time.perf_counter()
        self._last = self._start

    def update(self, n: int = 1, **extra: float) -> None:
        """Advance by ``n``; ``extra`` values (e.g. ``loss=0.3``) are appended to the line."""
        self.done += n
        now = time.perf_counter()
        finished = self.total is not None and self.done >= self.total
        if now - self._last >= self.every_s or (finished and self._worth_a_last_line(now)):
            self._last = now
            self._emit(now, extra)

    def _worth_a_last_line(self, now: float) -> bool:
        """A last line when earlier ones were shown or the work took ``every_s`` (quick work stays quiet)."""
        return self._emitted or self.every_s == 0 or now - self._start >= self.every_s

    def _emit(self, now: float, extra: dict[str, float]) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.desc}: {self.done}"]
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            parts = [f"{self.desc}: {self.done}/{self.total} ({pct:.0f}%)"]
            parts.append(f"{rate:.2f} {self.unit}/s, ETA {_fmt(eta)}")
        else:
            parts.append(f"{rate:.2f} {self.unit}/s, {_fmt(elapsed)} elapsed")
        parts += [f"{k}={v:.4g}" for k, v in extra.items()]
        self._log.info(" ".join(parts[:1]) + " " + ", ".join(parts[1:]), extra=PROGRESS)
        self._emitted = True

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self._start

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        now = time.perf_counter()
        if exc is None and (self.total is None or self.done < self.total) and self._worth_a_last_line(now):
            self._emit(now, {})


def _fmt(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
