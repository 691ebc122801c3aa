"""Line-oriented CSV reading that knows where every value came from.

Neither dataset puts a newline inside a field, so each physical line is decoded and split
on its own: a bad byte or an unbalanced quote costs one row, never the rest of the file,
and every error names the file, the 1-based line number and the column.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.data.errors import DataError, ParseReport

Splitting = Literal["csv", "comma"]
"""``csv``: RFC 4180 quoting (Python's ``csv`` module). ``comma``: split on every comma
and take fields by position, as ParlAI reads the official EmpatheticDialogues files."""


@dataclass(frozen=True)
class Record:
    """One data line: its 1-based line number in the file and its values by column."""

    line: int
    values: dict[str, str]

    def __getitem__(self, column: str) -> str:
        return self.values[column]


class CsvLines:
    """A CSV file read whole, its header checked; iterate :meth:`records` for the data lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise DataError(path, "file not found", fix="check data.ed_path / data.epitome_path") from None
        self._lines = raw.split(b"\n")
        if self._lines and self._lines[-1] == b"":
            self._lines.pop()
        if not self._lines or not self._lines[0].strip():
            raise DataError(path, "file is empty (no header line)", line=1, fix="re-download the file")
        try:
            first = self._lines[0].decode("utf-8").removeprefix("\ufeff").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise DataError(path, f"header is not UTF-8 ({exc.reason})", line=1) from None
        self.header = [h.strip() for h in _split(first, "csv")]

    def require(self, columns: Sequence[str]) -> None:
        """Raise (always, even when skipping bad rows) if the header lacks a column."""
        missing = [c for c in columns if c not in self.header]
        if missing:
            raise DataError(
                self.path,
                f"missing column (header has {self.header})",
                line=1,
                column=missing[0],
                fix=f"the header must name {list(columns)}",
            )

    def records(
        self, report: ParseReport, *, splitting: Splitting = "csv", min_fields: int | None = None
    ) -> Iterator[Record]:
        """Yield every well-formed data line; bad ones go to ``report.reject``.

        ``min_fields``: with ``comma`` splitting, shorter lines are padded with empty
        values down to this many fields, and longer lines are cut to the header's width
        (counted as ``extra_fields``), as ParlAI does. With ``csv`` splitting every line
        must have exactly the header's width.
        """
        width = len(self.header)
        least = width if min_fields is None or splitting == "csv" else min_fields
        for index, raw in enumerate(self._lines[1:], start=2):
            raw = raw.removesuffix(b"\r")
            if not raw.strip():
                report.count("blank_lines")
                continue
            report.rows += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                report.reject(self._bad_utf8(raw, exc, index, splitting))
                continue
            try:
                fields = _split(text, splitting)
            except csv.Error as exc:
                report.reject(
                    DataError(
                        self.path,
                        f"malformed CSV ({exc}); a quote is probably unbalanced",
                        line=index,
                        fix="quote fields that contain commas or quotes, doubling inner quotes",
                    )
                )
                continue
            if len(fields) < least or (len(fields) > width and splitting == "csv"):
                report.reject(self._bad_width(fields, index))
                continue
            if len(fields) > width:
                report.count("extra_fields")
                fields = fields[:width]
            fields += [""] * (width - len(fields))
            yield Record(index, dict(zip(self.header, fields, strict=True)))

    def _bad_width(self, fields: list[str], line: int) -> DataError:
        width = len(self.header)
        column = self.header[len(fields)] if len(fields) < width else self.header[-1]
        side = "missing" if len(fields) < width else "beyond the last column"
        return DataError(
            self.path,
            f"wrong number of fields: {len(fields)} instead of {width} ({side})",
            line=line,
            column=column,
            fix="quote fields that contain commas; each line must match the header",
        )

    def _bad_utf8(self, raw: bytes, exc: UnicodeDecodeError, line: int, splitting: Splitting) -> DataError:
        column = None
        try:
            fields = _split(raw.decode("utf-8", errors="replace"), splitting)
            column = next(
                (self.header[i] for i, f in enumerate(fields[: len(self.header)]) if "\ufffd" in f), None
            )
        except csv.Error:
            pass
        bad = raw[exc.start : exc.end].hex(" ")
        return DataError(
            self.path,
            f"invalid UTF-8 (bytes {bad} at byte {exc.start} of the line)",
            line=line,
            column=column,
            fix="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        )


def _split(text: str, splitting: Splitting) -> list[str]:
    if splitting == "comma" or '"' not in text:
        return text.split(",")
    return next(csv.reader((text,), strict=True))
