"""EPITOME (Sharma et al. 2020), Reddit portion: (seeker post, response) pairs with ER/IP/EX levels.

The three per-mechanism CSVs are joined on (``sp_id``, ``rp_id``) — their text differs in
whitespace — after resolving repeated pairs, then split train/dev/test, stratified on the
joint level tuple and seeded.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import MECHANISMS
from pipeline.data.errors import DataError, ParseReport
from pipeline.data.rows import CsvLines, Record

logger = logging.getLogger(__name__)

EPITOME_FILES: dict[str, str] = {
    "ER": "emotional-reactions-reddit.csv",
    "IP": "interpretations-reddit.csv",
    "EX": "explorations-reddit.csv",
}
"""File name of each mechanism's CSV, as in the official repository's ``dataset/``."""
EPITOME_COLUMNS = ("sp_id", "rp_id", "seeker_post", "response_post", "level", "rationales")
EPITOME_SPLITS = ("train", "dev", "test")
LEVELS = (0, 1, 2)
"""0 = no communication of the mechanism, 1 = weak, 2 = strong."""


@dataclass(frozen=True)
class EpitomePair:
    """One seeker post, one response, and its level (and rationales) for each mechanism."""

    sp_id: str
    rp_id: str
    seeker_post: str
    response_post: str
    er_level: int
    ip_level: int
    ex_level: int
    er_rationales: str
    ip_rationales: str
    ex_rationales: str

    @property
    def levels(self) -> tuple[int, int, int]:
        """``(ER, IP, EX)``, the stratum of the split."""
        return (self.er_level, self.ip_level, self.ex_level)

    def to_dict(self) -> dict[str, Any]:
        """A plain row for Arrow/Parquet."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Conflict:
    """A pair repeated within one file with different levels, and the level kept."""

    mechanism: str
    sp_id: str
    rp_id: str
    levels: tuple[int, ...]
    chosen: int


@dataclass(frozen=True)
class EpitomeData:
    """Deduplicated, joined pairs plus per-file reports and the duplicates resolved."""

    pairs: list[EpitomePair]
    reports: dict[str, ParseReport]
    duplicates: dict[str, dict[str, int]]
    """Per mechanism: ``pairs`` repeated, ``rows`` they span, ``conflicting`` pairs."""
    conflicts: list[Conflict]


@dataclass(frozen=True)
class _Row:
    line: int
    seeker_post: str
    response_post: str
    level: int
    rationales: str


def resolve_level(levels: Sequence[int]) -> int:
    """The level of a repeated pair: the most frequent one; a tie goes to the higher level.

    A tie means at least one annotation saw the mechanism at the higher strength, and the
    higher level's row carries the rationale that supports it. On the real files this
    keeps the higher level for every conflict except one EX pair annotated (0, 0, 2).
    """
    counts = Counter(levels)
    return max(counts, key=lambda level: (counts[level], level))


def _read_mechanism(path: Path, skip_bad_rows: bool) -> tuple[dict[tuple[str, str], list[_Row]], ParseReport]:
    lines = CsvLines(path)
    lines.require(EPITOME_COLUMNS)
    report = ParseReport(str(path), skip_bad_rows=skip_bad_rows)
    rows: dict[tuple[str, str], list[_Row]] = {}
    for record in lines.records(report):
        try:
            key, row = _row(record, path)
        except DataError as exc:
            report.reject(exc)
            continue
        rows.setdefault(key, []).append(row)
    return rows, report


def _row(record: Record, path: Path) -> tuple[tuple[str, str], _Row]:
    def bad(column: str, problem: str, fix: str) -> DataError:
        return DataError(path, problem, line=record.line, column=column, fix=fix)

    for column in ("sp_id", "rp_id", "seeker_post", "response_post"):
        if not record[column].strip():
            raise bad(column, f"empty {column}", "every row needs both ids and both texts")
    level = record["level"].strip()
    if level not in ("0", "1", "2"):
        raise bad("level", f"invalid level {level!r}", "levels are 0 (none), 1 (weak) or 2 (strong)")
    key = (record["sp_id"].strip(), record["rp_id"].strip())
    row = _Row(
        record.line,
        record["seeker_post"].strip(),
        record["response_post"].strip(),
        int(level),
        record["rationales"],
    )
    return key, row


def read_epitome(folder: Path, *, skip_bad_rows: bool = False) -> EpitomeData:
    """Read the three CSVs under ``folder``, resolve repeats, and join them on the ids.

    Repeated (``sp_id``, ``rp_id``) rows within one file are merged by
    :func:`resolve_level`; the rationales are those of the first row with the chosen
    level. The texts are those of the pair's first row in the ER file. A pair missing
    from one of the files is a bad row of the file where it appears first.
    """
    per_file: dict[str, dict[tuple[str, str], list[_Row]]] = {}
    reports: dict[str, ParseReport] = {}
    for mech in MECHANISMS:
        per_file[mech], reports[mech] = _read_mechanism(folder / EPITOME_FILES[mech], skip_bad_rows)
    duplicates: dict[str, dict[str, int]] = {}
    conflicts: list[Conflict] = []
    resolved: dict[str, dict[tuple[str, str], _Row]] = {}
    for mech in MECHANISMS:
        repeated = {k: v for k, v in per_file[mech].items() if len(v) > 1}
        resolved[mech] = {}
        for key, rows in per_file[mech].items():
            level = resolve_level([r.level for r in rows])
            resolved[mech][key] = next(r for r in rows if r.level == level)
            if len({r.level for r in rows}) > 1:
                conflicts.append(Conflict(mech, key[0], key[1], tuple(r.level for r in rows), level))
        duplicates[mech] = {
            "pairs": len(repeated),
            "rows": sum(len(v) for v in repeated.values()),
            "conflicting": sum(1 for c in conflicts if c.mechanism == mech),
        }
    order: dict[tuple[str, str], str] = {}
    for mech in MECHANISMS:
        for key in resolved[mech]:
            order.setdefault(key, mech)
    pairs = []
    for key, first_mech in order.items():
        missing = [m for m in MECHANISMS if key not in resolved[m]]
        if missing:
            reports[first_mech].reject(
                DataError(
                    folder / EPITOME_FILES[first_mech],
                    f"pair sp_id={key[0]} rp_id={key[1]} has no row in {EPITOME_FILES[missing[0]]}",
                    line=resolved[first_mech][key].line,
                    column="rp_id",
                    fix="the three files must list the same (sp_id, rp_id) pairs",
                )
            )
            continue
        er, ip, ex = (resolved[m][key] for m in MECHANISMS)
        pairs.append(
            EpitomePair(
                sp_id=key[0],
                rp_id=key[1],
                seeker_post=er.seeker_post,
                response_post=er.response_post,
                er_level=er.level,
                ip_level=ip.level,
                ex_level=ex.level,
                er_rationales=er.rationales,
                ip_rationales=ip.rationales,
                ex_rationales=ex.rationales,
            )
        )
    for report in reports.values():
        report.log()
    logger.info(
        "EPITOME %s: %d pairs after joining; repeated pairs %s; %d level conflicts resolved",
        folder,
        len(pairs),
        {m: d["pairs"] for m, d in duplicates.items()},
        len(conflicts),
    )
    return EpitomeData(pairs, reports, duplicates, conflicts)


def split_epitome(
    pairs: Sequence[EpitomePair], fractions: Sequence[float], seed: int
) -> dict[str, list[EpitomePair]]:
    """Deterministic stratified train/dev/test split (proportional systematic allocation).

    Pairs are sorted by their (ER, IP, EX) stratum and shuffled within it by ``seed``
    (from an id-sorted start, so input order does not matter). Walking that list, each
    pair goes to the split furthest behind its target share. So every split's size is
    within one of ``fraction * n``, every sizeable stratum is split in proportion (±1),
    and strata too small to split (a handful of pairs) fall back to the neighbouring
    strata in (ER, IP, EX) order, which keeps the per-mechanism marginals close.
    """
    if len(fractions) != len(EPITOME_SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions={list(fractions)}: need 3 non-negative fractions summing to 1")
    rng = random.Random(seed)
    strata: dict[tuple[int, int, int], list[EpitomePair]] = {}
    for pair in sorted(pairs, key=lambda p: (p.sp_id, p.rp_id)):
        strata.setdefault(pair.levels, []).append(pair)
    ordered: list[EpitomePair] = []
    for stratum in sorted(strata):
        members = strata[stratum]
        rng.shuffle(members)
        ordered += members
    out: dict[str, list[EpitomePair]] = {name: [] for name in EPITOME_SPLITS}
    taken = [0] * len(EPITOME_SPLITS)
    for i, pair in enumerate(ordered, start=1):
        deficits = [i * f - t for f, t in zip(fractions, taken, strict=True)]
        best = max(range(len(deficits)), key=lambda s: (deficits[s], -s))
        taken[best] += 1
        out[EPITOME_SPLITS[best]].append(pair)
    return out


def level_distribution(pairs: Sequence[EpitomePair]) -> dict[str, dict[str, int]]:
    """Pairs per level for each mechanism: ``{"ER": {"0": n0, "1": n1, "2": n2}, ...}``."""
    dist: dict[str, dict[str, int]] = {}
    for m, mech in enumerate(MECHANISMS):
        counts = Counter(p.levels[m] for p in pairs)
        dist[mech] = {str(level): counts.get(level, 0) for level in LEVELS}
    return dist
