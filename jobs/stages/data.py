"""Data stage: parse, split and cache the datasets the config names; statistics into the run folder
(``data/stats.json``, published when the run folder mirrors a URI). The sources may be URIs
(``data.ed_path=s3://...``): :func:`~pipeline.data.prepare_datasets` downloads them first."""

from __future__ import annotations

import time
from dataclasses import dataclass

from jobs.stages.result import StageResult, write_json
from pipeline.config import Config
from pipeline.data import PreparedData, prepare_datasets
from pipeline.layout import RunLayout


@dataclass(frozen=True)
class DataResult(StageResult):
    """The data stage's result, with the prepared datasets the next stages read."""

    prepared: PreparedData | None = None


def data_stage(cfg: Config, layout: RunLayout, *, refresh: bool = False) -> DataResult:
    """Prepare (or load from the cache) ``cfg.data`` and write ``data/stats.json``.

    Raises:
        DataError: a source is missing or malformed; the message names file, row and fix.
    """
    started = time.perf_counter()
    prepared = prepare_datasets(cfg.data, refresh=refresh)
    out = layout.data
    write_json(out.stats, prepared.stats)
    ed = {split: s["examples"] for split, s in prepared.stats["ed"].items()}
    pairs = prepared.stats["epitome"]["splits"]
    return DataResult(
        stage="data",
        folder=out.path,
        metrics={"ed": prepared.stats["ed"], "epitome_pairs": pairs},
        headline=f"ED examples {ed}; EPITOME pairs {pairs}",
        outputs={"stats": out.stats},
        seconds=time.perf_counter() - started,
        prepared=prepared,
    )


def prepared_data(cfg: Config, data: PreparedData | None) -> PreparedData:
    """``data`` when given (a run hands it on), else the prepared datasets of ``cfg.data`` (cached).

    Only the job's driver calls this (the stage functions); actors get their examples in their specs.
    The cache is node-local: a driver on a node without it builds it from the (fetched) source files.
    """
    return data if data is not None else prepare_datasets(cfg.data)
