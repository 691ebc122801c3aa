"""Bad input: the errors the data layer raises and the report of rows it skipped.

Every :class:`DataError` names the file, the 1-based line and the column. With
``skip_bad_rows`` the parsers record the error in a :class:`ParseReport` instead of raising.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import storage

logger = logging.getLogger(__name__)

MAX_LISTED = 20
"""Bad rows kept verbatim in a report (the count is always complete)."""


class DataError(ValueError):
    """A data file, or one row of it, breaks the format; the message says where and how to fix it."""

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        line: int | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.path = storage.display(path)  # the URI of a downloaded copy
        self.line = line
        self.column = column
        self.problem = problem
        self.fix = fix
        where = self.path
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        message = f"{where}: {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)


class DownloadError(RuntimeError):
    """A dataset could not be fetched or failed its checksum; the message says how to proceed."""


@dataclass(frozen=True)
class BadRow:
    """One skipped row: where it was and why."""

    path: str
    line: int | None
    column: str | None
    problem: str

    def __str__(self) -> str:
        return f"{self.path}, line {self.line}, column {self.column!r}: {self.problem}"


@dataclass
class ParseReport:
    """What parsing one file did: rows read, rows skipped (with reasons) and notable counts.

    ``counters`` holds documented, non-error events such as ``empty_turns`` (ED speaker
    turns with no text, dropped from histories) so no row disappears without a count.
    """

    path: str
    skip_bad_rows: bool = False
    rows: int = 0
    bad_rows: int = 0
    examples: list[BadRow] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def reject(self, error: DataError) -> None:
        """Raise ``error``, or, with ``skip_bad_rows``, count it and carry on."""
        if not self.skip_bad_rows:
            error.add_note("To skip bad rows and count them instead, pass data.skip_bad_rows=true.")
            raise error
        self.bad_rows += 1
        if len(self.examples) < MAX_LISTED:
            self.examples.append(BadRow(error.path, error.line, error.column, error.problem))

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        self.counters[name] = self.counters.get(name, 0) + n

    def log(self) -> None:
        """One info line; a warning listing the first bad rows when any were skipped."""
        extra = "".join(f", {k}={v}" for k, v in sorted(self.counters.items()))
        logger.info("%s: %d rows, %d bad rows skipped%s", self.path, self.rows, self.bad_rows, extra)
        if self.bad_rows:
            listed = "\n  ".join(str(b) for b in self.examples)
            logger.warning("%s: skipped %d bad rows, first ones:\n  %s", self.path, self.bad_rows, listed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (used in ``stats.json``)."""
        return {
            "path": self.path,
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "bad_row_examples": [str(b) for b in self.examples],
            **dict(sorted(self.counters.items())),
        }
