"""Prepared datasets: resolve the source, parse both datasets, and cache the result as Parquet.

A cache entry is keyed by the source files' sha256, the ``DataConfig`` fields that shape
the examples and :data:`FORMAT_VERSION`; a re-run with the same key loads the Parquet
files instead of parsing. Entries are written to a temporary folder and renamed into place.

``data.ed_path`` and ``data.epitome_path`` may be object-store URIs (``s3://bucket/data/epitome``): their
files are downloaded into this node's mirror of the URI (:func:`pipeline.storage.sync_down`, only the
files it lacks) before anything reads them. The cache (``data.cache_dir``) is always node-local, so every
node that prepares the data builds or reuses its own entry from the same files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.config import MECHANISMS, DataConfig
from pipeline.data.demo import write_demo_data
from pipeline.data.download import sha256_file
from pipeline.data.ed import EDExample, parse_ed
from pipeline.data.epitome import (
    EPITOME_FILES,
    EPITOME_SPLITS,
    EpitomePair,
    level_distribution,
    read_epitome,
    split_epitome,
)
from pipeline.data.errors import DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when parsing rules or the stored schema change, so old cache entries are not reused."""
_LOCATION_FIELDS = frozenset({"source", "ed_path", "epitome_path", "cache_dir"})
"""DataConfig fields that say where files are, not what is built from them (the key uses the file hashes)."""

ED_SCHEMA = pa.schema(
    [
        ("conv_id", pa.string()),
        ("turn", pa.int64()),
        ("emotion", pa.string()),
        ("situation", pa.string()),
        ("history", pa.list_(pa.string())),
        ("context", pa.string()),
        ("response", pa.string()),
    ]
)
EPITOME_SCHEMA = pa.schema(
    [
        ("sp_id", pa.string()),
        ("rp_id", pa.string()),
        ("seeker_post", pa.string()),
        ("response_post", pa.string()),
    ]
    + [(f"{m.lower()}_level", pa.int64()) for m in MECHANISMS]
    + [(f"{m.lower()}_rationales", pa.string()) for m in MECHANISMS]
)

T = TypeVar("T")


@dataclass(frozen=True)
class PreparedData:
    """ED examples per split (``train``/``valid``/...), EPITOME pairs per split (``train``/``dev``/``test``)."""

    ed: dict[str, datasets.Dataset]
    epitome: dict[str, datasets.Dataset]
    stats: dict[str, Any]
    """Counts per split, EPITOME levels per mechanism and split, duplicates and bad rows."""
    path: Path
    """The cache entry holding the Parquet files and ``stats.json``."""


def resolve_sources(cfg: DataConfig) -> tuple[Path, Path]:
    """The local ED and EPITOME folders for ``cfg.source`` (writing the demo set on first use; a URI's
    files downloaded into its mirror folder, which is returned)."""
    if cfg.source == "demo":
        root = _demo_source(Path(cfg.cache_dir).expanduser())
        return root / "empatheticdialogues", root / "epitome"
    if cfg.ed_path is None or cfg.epitome_path is None:
        raise DataError(
            "data config",
            "data.source=local needs data.ed_path and data.epitome_path",
            fix="pass data.ed_path=DIR data.epitome_path=DIR (fetch them with `emprl data download`)",
        )
    return _local_folder(cfg.ed_path), _local_folder(cfg.epitome_path)


def _local_folder(location: str) -> Path:
    """The folder of ``location`` on this node: a local path as it is, a URI's (or a mirror path's)
    files downloaded into its mirror (plain files uploaded without a completion marker)."""
    return storage.sync_down(storage.local_path(location).expanduser())


def _demo_source(cache_dir: Path) -> Path:
    root = cache_dir / "demo-src"
    wanted = [root / "empatheticdialogues" / f"{s}.csv" for s in ("train", "valid")]
    wanted += [root / "epitome" / name for name in EPITOME_FILES.values()]
    if all(p.is_file() for p in wanted):
        return root
    logger.info("writing the demo data set to %s", root)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-src-", dir=cache_dir))
    try:
        write_demo_data(tmp)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def source_files(cfg: DataConfig, ed_dir: Path, epitome_dir: Path) -> dict[str, Path]:
    """Every file parsing reads, by a stable name (``ed/train.csv``, ``epitome/<file>``)."""
    files = {f"ed/{split}.csv": ed_dir / f"{split}.csv" for split in cfg.splits}
    files |= {f"epitome/{name}": epitome_dir / name for name in EPITOME_FILES.values()}
    for name, path in files.items():
        if not path.is_file():
            folder = "data.ed_path" if name.startswith("ed/") else "data.epitome_path"
            raise DataError(
                path,
                "file not found" + (" in the bucket" if storage.uri_of(path) else ""),
                fix=f"point {folder} at the folder holding it, or run `emprl data download`",
            )
    return files


def cache_key(cfg: DataConfig, files: dict[str, Path]) -> str:
    """sha256 over the format version, the shaping config fields and the source files' sha256."""
    shaping = {
        f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in _LOCATION_FIELDS
    }
    payload = {
        "format_version": FORMAT_VERSION,
        "config": shaping,
        "files": {name: sha256_file(path) for name, path in sorted(files.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


def prepare_datasets(cfg: DataConfig, *, refresh: bool = False) -> PreparedData:
    """Parsed, split and cached datasets for ``cfg``; ``refresh`` rebuilds even on a cache hit."""
    ed_dir, epitome_dir = resolve_sources(cfg)
    files = source_files(cfg, ed_dir, epitome_dir)
    key = cache_key(cfg, files)
    entries = Path(cfg.cache_dir).expanduser() / "prepared"
    entry = entries / key[:16]
    if entry.is_dir() and not refresh:
        logger.info("cache hit: %s", entry)
        return _load(entry)
    logger.info("cache miss: preparing data into %s", entry)
    tables, stats = build(cfg, ed_dir, epitome_dir)
    stats |= {"format_version": FORMAT_VERSION, "key": key, "source": cfg.source}
    stats["files"] = {name: storage.display(path) for name, path in files.items()}
    _write(entry, tables, stats)
    return _load(entry)


def build(cfg: DataConfig, ed_dir: Path, epitome_dir: Path) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """Parse both datasets into Arrow tables (``ed-<split>``, ``epitome-<split>``) and their stats.

    ``max_examples`` keeps a seeded random subset of each split, in file order.
    """
    tables: dict[str, pa.Table] = {}
    reports: dict[str, Any] = {}
    ed_stats: dict[str, Any] = {}
    for split, parsed in parse_ed(ed_dir, cfg).items():
        kept: list[EDExample] = _cap(parsed.examples, cfg.max_examples, cfg.seed)
        tables[f"ed-{split}"] = pa.Table.from_pylist([e.to_dict() for e in kept], schema=ED_SCHEMA)
        ed_stats[split] = {
            "conversations": parsed.conversations,
            "examples": len(parsed.examples),
            "kept": len(kept),
        }
        reports[f"ed/{split}.csv"] = parsed.report.to_dict()
    epitome = read_epitome(epitome_dir, skip_bad_rows=cfg.skip_bad_rows)
    splits = split_epitome(epitome.pairs, cfg.epitome_split, cfg.seed)
    levels: dict[str, Any] = {"all": level_distribution(epitome.pairs)}
    epitome_stats: dict[str, Any] = {"pairs": len(epitome.pairs), "splits": {}, "levels": levels}
    for split in EPITOME_SPLITS:
        kept_pairs: list[EpitomePair] = _cap(splits[split], cfg.max_examples, cfg.seed)
        tables[f"epitome-{split}"] = pa.Table.from_pylist(
            [p.to_dict() for p in kept_pairs], schema=EPITOME_SCHEMA
        )
        epitome_stats["splits"][split] = len(kept_pairs)
        levels[split] = level_distribution(kept_pairs)
    epitome_stats["duplicates"] = epitome.duplicates
    epitome_stats["conflicts"] = [dataclasses.asdict(c) for c in epitome.conflicts]
    for mech, report in epitome.reports.items():
        reports[f"epitome/{EPITOME_FILES[mech]}"] = report.to_dict()
    stats = {
        "ed": ed_stats,
        "epitome": epitome_stats,
        "reports": reports,
        "bad_rows": sum(r["bad_rows"] for r in reports.values()),
    }
    logger.info(
        "prepared ED %s, EPITOME %s (%d bad rows skipped)",
        {s: v["kept"] for s, v in ed_stats.items()},
        epitome_stats["splits"],
        stats["bad_rows"],
    )
    return tables, stats


def _cap(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    if limit is None or len(items) <= limit:
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def _write(entry: Path, tables: dict[str, pa.Table], stats: dict[str, Any]) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        for name, table in tables.items():
            pq.write_table(table, tmp / f"{name}.parquet")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        if entry.is_dir():  # refresh, or another process finished first
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("cached prepared data in %s", entry)


def _load(entry: Path) -> PreparedData:
    stats = json.loads((entry / "stats.json").read_text())

    def dataset(name: str) -> datasets.Dataset:
        return datasets.Dataset(datasets.table.InMemoryTable(pq.read_table(entry / f"{name}.parquet")))

    return PreparedData(
        ed={split: dataset(f"ed-{split}") for split in stats["ed"]},
        epitome={split: dataset(f"epitome-{split}") for split in EPITOME_SPLITS},
        stats=stats,
        path=entry,
    )
