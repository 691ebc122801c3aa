"""Label job: score every (context, response) example of each split with the ER/IP/EX identifiers.

Owns a pool of ``num_workers`` :class:`~actors.inference.scorer.IdentifierScorerWorker` actors (``resources.reward_cpus``
CPUs each, or one GPU). Consumes prepared splits (Hugging Face datasets with ``context`` and
``response``); produces a part file per shard (:meth:`~pipeline.layout.LabeledDir.parts`), written
atomically as each finishes, then the labelled split (original columns in original order + level
columns) and the label statistics, where :class:`~pipeline.layout.LabeledDir` names them. Resumable: shards whose part file exists are not scored again.

The output folder may mirror a URI (a run in a bucket): the driver, which writes every part file,
publishes each one as soon as it is complete (one object each, so a part exists only when whole), and
a re-run on any node takes the parts listed in the bucket as done and downloads them before merging;
the merged splits and the statistics are published too. Scorer actors fetch the identifiers on their
own node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from datasets import Dataset

from actors.cluster.session import worker_runtime_env
from actors.inference.scorer import IdentifierScorerWorker
from pipeline import storage
from pipeline.config import MECHANISMS, IdentifiersConfig, ResourcesConfig
from pipeline.layout import IdentifiersDir, LabeledDir
from pipeline.models.identifier import HEAD_FILE, META_FILE, NUM_LEVELS
from pipeline.progress import Progress
from pipeline.scoring import fetch_identifiers, identifier_folders, level_columns

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
TEXT_COLUMNS = ("context", "response")


class LabelingError(RuntimeError):
    """The label job cannot run on these inputs, or a scorer actor failed."""


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of one split, written to ``path``."""

    split: str
    index: int
    start: int
    stop: int
    path: Path

    @property
    def rows(self) -> int:
        return self.stop - self.start


def part_path(out: LabeledDir | Path, split: str, index: int) -> Path:
    """Part file of shard ``index`` of ``split``: ``part-NNNNN.parquet`` in the split's parts folder."""
    return _labeled(out).parts(split) / f"part-{index:05d}.parquet"


def _labeled(out: LabeledDir | Path | str) -> LabeledDir:
    return out if isinstance(out, LabeledDir) else LabeledDir(storage.local_path(str(out)))


def label_splits(
    datasets: Mapping[str, Dataset],
    identifiers: IdentifiersDir | str | Path,
    out: LabeledDir | str | Path,
    cfg: IdentifiersConfig,
    res: ResourcesConfig,
    *,
    num_workers: int = 1,
    shard_rows: int = 2048,
    worker_cls: type[IdentifierScorerWorker] = IdentifierScorerWorker,
) -> dict[str, Any]:
    """Label every row of every split and return the statistics written to ``label_stats.json``.

    Shards of ``shard_rows`` rows are scored by a pool of ``num_workers`` actors (all calls
    submitted at once, round-robin); each finished shard is written at once, so a crash keeps
    them and a re-run scores only the missing ones. ``worker_cls`` lets tests inject failures.

    Returns:
        ``{"splits": {split: {"rows", "shards", "levels": {ER: {"counts", "fractions"}, ...}}},
        "run": {"scored_rows", "skipped_shards", "seconds", "rows_per_s", "num_workers"}, ...}``.

    Raises:
        LabelingError: a split lacks ``context``/``response`` or already has a label column, the
            output folder holds parts of other data or identifiers, or a scorer actor failed (after
            every other shard was written).
    """
    if num_workers < 1 or shard_rows < 1:
        raise ValueError(f"label_splits: num_workers={num_workers} and shard_rows={shard_rows} must be >= 1")
    identifiers_dir = fetch_identifiers(
        identifiers.path if isinstance(identifiers, IdentifiersDir) else identifiers, MECHANISMS
    )
    labeled = _labeled(out)
    identifier_folders(identifiers_dir, MECHANISMS)  # fail here, not inside every actor
    labels = level_columns(MECHANISMS)
    for split, ds in datasets.items():
        _check_columns(split, ds, labels)

    shards: list[Shard] = []
    done: set[Path] = set()
    for split, ds in datasets.items():
        folder = labeled.parts(split)
        _claim_split_dir(folder, _manifest(ds, identifiers_dir, cfg, shard_rows))
        shards += _shards(split, len(ds), shard_rows, labeled)
        done |= {folder / name for name in storage.list_names(folder)}  # in the bucket for a mirror
    pending = [s for s in shards if s.path not in done]
    skipped = len(shards) - len(pending)
    if skipped:
        logger.info(
            "resuming: %d of %d shards already labelled, %d to score", skipped, len(shards), len(pending)
        )

    start = time.perf_counter()
    _score_shards(pending, datasets, identifiers_dir, cfg, res, num_workers, worker_cls)
    seconds = time.perf_counter() - start

    stats: dict[str, Any] = {
        "identifiers_dir": storage.display(identifiers_dir),
        "mechanisms": list(MECHANISMS),
        "shard_rows": shard_rows,
        "splits": {},
    }
    for split, ds in datasets.items():
        table = _concat_parts(split, [s for s in shards if s.split == split], ds, labeled)
        stats["splits"][split] = {
            "rows": table.num_rows,
            "shards": math.ceil(len(ds) / shard_rows),
            "levels": level_distribution(table),
        }
    scored = sum(s.rows for s in pending)
    stats["run"] = {
        "scored_rows": scored,
        "skipped_shards": skipped,
        "seconds": round(seconds, 3),
        "rows_per_s": round(scored / seconds, 1) if scored and seconds > 0 else None,
        "num_workers": min(num_workers, len(pending)),
    }
    _write_atomic(labeled.stats, (json.dumps(stats, indent=2) + "\n").encode())
    storage.publish(labeled.stats)
    logger.info(
        "labels written to %s (%s)",
        storage.display(labeled.path),
        {k: v["rows"] for k, v in stats["splits"].items()},
    )
    return stats


def level_distribution(table: pa.Table) -> dict[str, dict[str, dict[str, float]]]:
    """Per mechanism, rows per predicted level: ``{"ER": {"counts": {"0": n0, ...}, "fractions": {...}}}``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for m in MECHANISMS:
        levels = table.column(f"{m.lower()}_level").to_numpy()
        counts = np.bincount(levels, minlength=NUM_LEVELS)
        total = max(int(counts.sum()), 1)
        out[m] = {
            "counts": {str(k): int(c) for k, c in enumerate(counts)},
            "fractions": {str(k): round(int(c) / total, 6) for k, c in enumerate(counts)},
        }
    return out


def _check_columns(split: str, ds: Dataset, labels: list[str]) -> None:
    missing = [c for c in TEXT_COLUMNS if c not in ds.column_names]
    if missing:
        raise LabelingError(
            f"split {split!r} has no {missing[0]!r} column (columns: {ds.column_names}). Fix: pass prepared "
            "ED splits, or rename the text columns to 'context' and 'response'."
        )
    clash = [c for c in labels if c in ds.column_names]
    if clash:
        raise LabelingError(
            f"split {split!r} already has a column {clash[0]!r}, which labelling would write. Fix: drop or "
            f"rename it first (ds.rename_column({clash[0]!r}, 'gold_{clash[0]}'))."
        )


def _shards(split: str, rows: int, shard_rows: int, out: LabeledDir) -> list[Shard]:
    return [
        Shard(split, i, start, min(start + shard_rows, rows), part_path(out, split, i))
        for i, start in enumerate(range(0, rows, shard_rows))
    ]


def _manifest(ds: Dataset, identifiers_dir: Path, cfg: IdentifiersConfig, shard_rows: int) -> dict[str, Any]:
    """What the parts of a split depend on; a resume must find the same."""
    text = hashlib.sha256()
    for column in TEXT_COLUMNS:
        for value in ds[column]:
            text.update(value.encode("utf-8", "surrogatepass") + b"\0")
    ids = {}
    for m, folder in identifier_folders(identifiers_dir, MECHANISMS).items():
        digest = hashlib.sha256()
        for name in (META_FILE, HEAD_FILE):
            digest.update((folder / name).read_bytes())
        ids[m] = digest.hexdigest()
    return {
        "rows": len(ds),
        "shard_rows": shard_rows,
        "text_sha256": text.hexdigest(),
        "identifiers_sha256": ids,
        "max_context_len": cfg.max_context_len,
        "max_response_len": cfg.max_response_len,
    }


def _claim_split_dir(folder: Path, manifest: dict[str, Any]) -> None:
    """Create ``folder`` with its manifest, or check that an existing one was made for the same job
    (for a mirror folder: the manifest in the bucket, written there when missing)."""
    file = folder / MANIFEST_FILE
    text = storage.read_text(file)
    folder.mkdir(parents=True, exist_ok=True)
    if text is not None:
        found = json.loads(text)
        if found != manifest:
            diff = sorted(k for k in manifest.keys() | found.keys() if manifest.get(k) != found.get(k))
            where = storage.display(folder)
            raise LabelingError(
                f"{where} holds labels of a different job ({', '.join(diff)} differ), so its parts cannot be "
                f"resumed. Fix: delete {where} to relabel, or pass another output folder."
            )
    else:
        storage.write_text(file, json.dumps(manifest, indent=2) + "\n")
    for stale in folder.glob(".*.tmp"):  # left by a crash between write and rename
        stale.unlink()


def _score_shards(
    pending: list[Shard],
    datasets_by_split: Mapping[str, Dataset],
    identifiers_dir: Path,
    cfg: IdentifiersConfig,
    res: ResourcesConfig,
    num_workers: int,
    worker_cls: type[IdentifierScorerWorker],
) -> None:
    """Score ``pending`` shards on an actor pool, writing each part as it arrives."""
    if not pending:
        return
    size = min(num_workers, len(pending))
    remote_cls = ray.remote(worker_cls).options(
        num_cpus=res.reward_cpus,
        num_gpus=1 if res.use_gpu else 0,
        runtime_env=worker_runtime_env(res),  # with the storage settings of this driver
    )
    actors: list[Any] = [
        remote_cls.remote(
            storage.portable(identifiers_dir),
            cfg,
            torch_threads=res.torch_threads,
            device="cuda" if res.use_gpu else "cpu",
        )
        for _ in range(size)
    ]
    logger.info(
        "labelling %d rows in %d shards on %d scorer actors (%s CPUs each)",
        sum(s.rows for s in pending),
        len(pending),
        size,
        res.reward_cpus,
    )
    tables = {s: datasets_by_split[s.split].with_format("arrow")[s.start : s.stop] for s in pending}
    refs = {
        actors[i % size].score_columns.remote(
            tables[s].column("context").to_pylist(), tables[s].column("response").to_pylist()
        ): (i % size, s)
        for i, s in enumerate(pending)
    }
    failures: list[str] = []
    first_error: BaseException | None = None
    try:
        with Progress("label", sum(s.rows for s in pending), unit="rows", log=logger) as progress:
            waiting = list(refs)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                rank, shard = refs[done[0]]
                try:
                    columns = ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    failures.append(
                        f"reward scorer actor {rank} failed on split {shard.split!r} shard {shard.index} "
                        f"(rows {shard.start}..{shard.stop - 1}): {_reason(exc)}"
                    )
                    first_error = first_error or exc
                    logger.error("%s\n%s", failures[-1], exc)
                    continue
                _write_part(tables.pop(shard), columns, shard)
                progress.update(shard.rows)
    finally:
        for actor in actors:
            ray.kill(actor)
    if failures:
        raise LabelingError(
            f"{len(failures)} of {len(pending)} shards failed; every other shard was written and a re-run "
            f"scores only the missing ones. First failure: {failures[0]}"
        ) from first_error


def _reason(exc: ray.exceptions.RayError) -> str:
    """The remote exception in one line (a task error's traceback stays in the log)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return " ".join(str(exc).split())


def _write_part(table: pa.Table, columns: Mapping[str, np.ndarray], shard: Shard) -> None:
    for name, values in columns.items():
        if len(values) != shard.rows:
            raise LabelingError(
                f"split {shard.split!r} shard {shard.index}: column {name} has {len(values)} values for "
                f"{shard.rows} rows"
            )
        table = table.append_column(name, pa.array(values))
    _write_table_atomic(table.replace_schema_metadata(None), shard.path)
    storage.publish(shard.path)  # one object: in the bucket only once complete


def _concat_parts(split: str, shards: list[Shard], ds: Dataset, out: LabeledDir) -> pa.Table:
    """The labelled split: the parts in shard (= row) order, checked to cover every row."""
    rows = len(ds)
    storage.sync_down(out.parts(split))  # parts written on another node or by an earlier run
    tables = [pq.read_table(s.path) for s in shards]
    for shard, table in zip(shards, tables, strict=True):
        if table.num_rows != shard.rows:
            raise LabelingError(
                f"{storage.display(shard.path)} has {table.num_rows} rows, expected {shard.rows}. Fix: "
                "delete it and re-run."
            )
    table = pa.concat_tables(tables) if tables else _empty_labelled(ds)
    if table.num_rows != rows:
        raise LabelingError(f"split {split!r}: the parts hold {table.num_rows} rows, the split {rows}")
    _write_table_atomic(table, out.split(split))
    storage.publish(out.split(split))
    return table


def _empty_labelled(ds: Dataset) -> pa.Table:
    table = ds.with_format("arrow")[0:0].replace_schema_metadata(None)
    for name in level_columns(MECHANISMS):
        table = table.append_column(
            name, pa.array([], pa.int64() if name.endswith("_level") else pa.float32())
        )
    return table


def _write_table_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
