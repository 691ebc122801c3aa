"""Identifier stages: train the ER/IP/EX identifiers on EPITOME, and label ED's gold responses with them."""

from __future__ import annotations

import logging
import time
from typing import Any

from actors.inference.labeling import label_splits
from actors.training.identifiers import TrainSpec, train_identifiers
from jobs.stages.data import prepared_data
from jobs.stages.result import StageResult, write_json
from pipeline import storage
from pipeline.config import Config
from pipeline.data import PreparedData
from pipeline.layout import RunLayout
from pipeline.models import build_identifier_tokenizer
from pipeline.training.identifiers import LabeledPairs

logger = logging.getLogger(__name__)

SHARMA_2020 = {"ER": (79.4, 74.5), "IP": (84.0, 62.6), "EX": (92.6, 72.6)}
"""Sharma et al. 2020 (RoBERTa, TalkLife + Reddit), accuracy / macro-F1 — the targets to beat."""


def identifier_texts(data: PreparedData) -> list[str]:
    """Text a locally trained identifier tokenizer learns from: EPITOME train and ED train."""
    epi, ed = data.epitome["train"], data.ed["train"]
    return [*epi["seeker_post"], *epi["response_post"], *ed["context"], *ed["response"]]


def identifiers_stage(
    cfg: Config, layout: RunLayout, data: PreparedData | None = None, *, resume: bool = True
) -> StageResult:
    """Train the identifiers into ``layout.identifiers`` (one folder per mechanism, ``metrics.json``),
    resuming from the Ray Train checkpoints there unless ``resume`` is False. The tokenizer is built
    once, and published when the run folder mirrors a URI (the Train workers read it on any node)."""
    started = time.perf_counter()
    data = prepared_data(cfg, data)
    out = layout.identifiers
    out.path.mkdir(parents=True, exist_ok=True)
    storage.fetch(out.tokenizer)  # a published tokenizer, on a node that has none yet
    if not (storage.exists(out.tokenizer) and (out.tokenizer / "tokenizer_config.json").is_file()):
        build_identifier_tokenizer(cfg.identifiers, identifier_texts(data)).save_pretrained(out.tokenizer)
        storage.publish(out.tokenizer)
    columns = {split: data.epitome[split].to_dict() for split in ("train", "dev", "test")}
    specs = [
        TrainSpec(
            mechanism=m,
            cfg=cfg.identifiers,
            tokenizer_dir=storage.portable(out.tokenizer),
            train=LabeledPairs.from_columns(columns["train"], m),
            dev=LabeledPairs.from_columns(columns["dev"], m),
            test=LabeledPairs.from_columns(columns["test"], m),
            seed=cfg.run.seed,
            torch_threads=cfg.resources.torch_threads,
        )
        for m in cfg.identifiers.mechanisms
    ]
    metrics = train_identifiers(specs, cfg.resources, out.path, resume=resume)
    table = summary_table(metrics)
    write_json(out.metrics, {"mechanisms": metrics, "table": table})
    for line in table:
        logger.info(line)
    result = {
        m: {"test_accuracy": v["test"]["accuracy"], "test_macro_f1": v["test"]["macro_f1"]}
        for m, v in metrics.items()
    }
    headline = ", ".join(
        f"{m} acc {100 * r['test_accuracy']:.1f} / macro-F1 {100 * r['test_macro_f1']:.1f}"
        for m, r in result.items()
    )
    return StageResult(
        stage="identifiers",
        folder=out.path,
        metrics=result,
        headline=f"test {headline}",
        outputs={"metrics": out.metrics},
        seconds=time.perf_counter() - started,
    )


def label_stage(cfg: Config, layout: RunLayout, data: PreparedData | None = None) -> StageResult:
    """Label every gold ED response of ``data.splits`` with ``layout.identifiers`` into
    ``layout.labeled`` (resumable shard by shard)."""
    started = time.perf_counter()
    data = prepared_data(cfg, data)
    stats = label_splits(
        {split: data.ed[split] for split in cfg.data.splits if split in data.ed},
        layout.identifiers,
        layout.labeled,
        cfg.identifiers,
        cfg.resources,
        num_workers=cfg.reward.num_scorers,
    )
    rows = {k: v["rows"] for k, v in stats["splits"].items()}
    return StageResult(
        stage="label",
        folder=layout.labeled.path,
        metrics={"splits": rows, "rows_per_s": stats["run"]["rows_per_s"]},
        headline=f"labelled {rows} gold responses",
        outputs={"stats": layout.labeled.stats},
        seconds=time.perf_counter() - started,
    )


def summary_table(metrics: dict[str, Any]) -> list[str]:
    """Test accuracy / macro-F1 per mechanism next to Sharma et al. 2020 and the majority class."""
    lines = [
        f"{'mech':4} {'acc':>6} {'macroF1':>8} | {'Sharma acc':>10} {'F1':>5} | {'majority acc':>12} {'F1':>5}"
    ]
    for m, v in metrics.items():
        ref_acc, ref_f1 = SHARMA_2020[m]
        base = v["majority_baseline_test"]
        lines.append(
            f"{m:4} {100 * v['test']['accuracy']:6.1f} {100 * v['test']['macro_f1']:8.1f} | "
            f"{ref_acc:10.1f} {ref_f1:5.1f} | {100 * base['accuracy']:12.1f} {100 * base['macro_f1']:5.1f}"
        )
    return lines
