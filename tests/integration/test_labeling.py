"""The label job on the demo data: a pool of scorer actors, resumable part files, stats."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from ppo_inputs import IDENTIFIERS

from actors.inference.labeling import LabelingError, label_splits, part_path
from actors.inference.scorer import IdentifierScorerWorker
from pipeline.config import MECHANISMS, ResourcesConfig
from pipeline.data import PreparedData
from pipeline.layout import LabeledDir
from pipeline.models import ModelSourceError, build_identifier, save_identifier, train_tokenizer
from pipeline.scoring import EmpathyScorer, level_columns

pytestmark = pytest.mark.integration

CFG = replace(IDENTIFIERS, score_batch_size=32)
RES = ResourcesConfig(reward_cpus=0.5, torch_threads=1)
SHARD_ROWS = 64
ORIGINAL = ["conv_id", "turn", "emotion", "situation", "history", "context", "response"]


@pytest.fixture(scope="module")
def identifiers_dir(demo: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("identifiers")
    texts = list(demo.ed["train"]["context"]) + list(demo.ed["train"]["response"])
    for i, m in enumerate(MECHANISMS):
        torch.manual_seed(i)
        tokenizer = train_tokenizer(texts[i * 50 :], CFG.vocab_size)
        save_identifier(build_identifier(CFG, tokenizer), tokenizer, folder / m)
    return folder


@pytest.fixture(scope="module")
def full_run(
    ray_cluster: None, demo: PreparedData, identifiers_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("labels")
    stats = label_splits(demo.ed, identifiers_dir, out, CFG, RES, num_workers=2, shard_rows=SHARD_ROWS)
    return out, stats


def test_every_row_is_labelled_in_order_with_original_columns(
    demo: PreparedData, full_run: tuple[Path, dict[str, Any]]
) -> None:
    out, _ = full_run
    for split, ds in demo.ed.items():
        table = pq.read_table(out / f"{split}.parquet")
        assert table.column_names == ORIGINAL + level_columns()
        assert table.num_rows == len(ds) > 0
        original = ds.with_format("arrow")[:]
        for column in ORIGINAL:
            assert table.column(column).to_pylist() == original.column(column).to_pylist(), column
        for m in MECHANISMS:
            key = m.lower()
            probs = np.stack([table.column(f"{key}_p{k}").to_numpy() for k in range(3)], axis=1)
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
            np.testing.assert_array_equal(table.column(f"{key}_level").to_numpy(), probs.argmax(axis=1))


def test_labels_equal_in_process_scoring(
    demo: PreparedData, identifiers_dir: Path, full_run: tuple[Path, dict[str, Any]]
) -> None:
    out, _ = full_run
    scorer = EmpathyScorer.from_config(identifiers_dir, CFG)
    for split, ds in demo.ed.items():
        table = pq.read_table(out / f"{split}.parquet")
        scores = scorer.score(ds["context"], ds["response"])
        for m in MECHANISMS:
            key = m.lower()
            probs = np.stack([table.column(f"{key}_p{k}").to_numpy() for k in range(3)], axis=1)
            np.testing.assert_allclose(probs, scores.probs[m], atol=1e-5)
            # levels agree wherever the top two probabilities are not a float-rounding tie
            top2 = np.sort(scores.probs[m], axis=1)[:, -2:]
            clear = top2[:, 1] - top2[:, 0] > 1e-4
            levels = table.column(f"{key}_level").to_numpy()
            np.testing.assert_array_equal(levels[clear], scores.levels[m][clear])


def test_stats_add_up(demo: PreparedData, full_run: tuple[Path, dict[str, Any]]) -> None:
    out, stats = full_run
    assert json.loads(LabeledDir(out).stats.read_text()) == stats
    assert stats["run"]["scored_rows"] == sum(len(ds) for ds in demo.ed.values())
    assert stats["run"]["skipped_shards"] == 0 and stats["run"]["rows_per_s"] > 0
    for split, ds in demo.ed.items():
        entry = stats["splits"][split]
        assert entry["rows"] == len(ds) and entry["shards"] == -(-len(ds) // SHARD_ROWS)
        levels = pq.read_table(out / f"{split}.parquet")
        for m in MECHANISMS:
            counts, fractions = entry["levels"][m]["counts"], entry["levels"][m]["fractions"]
            assert sum(counts.values()) == len(ds)
            assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-5)
            predicted = np.bincount(levels.column(f"{m.lower()}_level").to_numpy(), minlength=3)
            assert [counts[str(k)] for k in range(3)] == predicted.tolist()


def test_resume_scores_only_missing_shards(
    ray_cluster: None,
    demo: PreparedData,
    identifiers_dir: Path,
    full_run: tuple[Path, dict[str, Any]],
    tmp_path: Path,
) -> None:
    marker = demo.ed["train"]["context"][2 * SHARD_ROWS]  # first row of train shard 2

    class FailingWorker(IdentifierScorerWorker):
        """Crashes on train shard 2, as a worker dying mid-job would."""

        def score_columns(self, contexts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
            if contexts[0] == marker:
                raise RuntimeError("injected scorer failure")
            return super().score_columns(contexts, responses)

    out = tmp_path / "labels"
    with pytest.raises(
        LabelingError, match=r"split 'train' shard 2 \(rows 128\.\.191\): RuntimeError: injected"
    ):
        label_splits(demo.ed, identifiers_dir, out, CFG, RES, shard_rows=SHARD_ROWS, worker_cls=FailingWorker)
    n_shards = {split: -(-len(ds) // SHARD_ROWS) for split, ds in demo.ed.items()}
    parts = [part_path(out, split, i) for split, n in n_shards.items() for i in range(n)]
    lost = part_path(out, "train", 2)
    assert [p for p in parts if not p.is_file()] == [lost]  # every other shard was kept
    before = {p: p.stat().st_mtime_ns for p in parts if p != lost}

    stats = label_splits(demo.ed, identifiers_dir, out, CFG, RES, shard_rows=SHARD_ROWS)
    assert stats["run"]["scored_rows"] == SHARD_ROWS
    assert stats["run"]["skipped_shards"] == len(parts) - 1
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished parts were not rewritten
    full_out, full_stats = full_run
    for split in demo.ed:
        assert pq.read_table(out / f"{split}.parquet").equals(pq.read_table(full_out / f"{split}.parquet"))
    assert stats["splits"] == full_stats["splits"]

    # a deleted part is recomputed; a complete folder is only re-concatenated, without actors
    part_path(out, "valid", 1).unlink()
    assert label_splits(demo.ed, identifiers_dir, out, CFG, RES, shard_rows=SHARD_ROWS)["run"][
        "scored_rows"
    ] == (len(demo.ed["valid"]) - SHARD_ROWS)
    again = label_splits(demo.ed, identifiers_dir, out, CFG, RES, shard_rows=SHARD_ROWS)
    assert again["run"]["scored_rows"] == 0 and again["run"]["skipped_shards"] == len(parts)
    assert pq.read_table(out / "valid.parquet").equals(pq.read_table(full_out / "valid.parquet"))


def test_inputs_that_cannot_resume_or_run_fail_before_any_work(
    demo: PreparedData, identifiers_dir: Path, full_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = full_run
    with pytest.raises(LabelingError, match=r"different job \(shard_rows differ\).*Fix: delete"):
        label_splits(demo.ed, identifiers_dir, out, CFG, RES, shard_rows=SHARD_ROWS + 1)
    with pytest.raises(ModelSourceError, match="emprl identifiers train"):
        label_splits(demo.ed, tmp_path / "none", tmp_path / "out", CFG, RES)
    epitome = demo.epitome["train"]
    with pytest.raises(LabelingError, match="has no 'context' column"):
        label_splits({"train": epitome}, identifiers_dir, tmp_path / "out", CFG, RES)
    epitome = epitome.rename_columns({"seeker_post": "context", "response_post": "response"})
    with pytest.raises(LabelingError, match="already has a column 'er_level'"):
        label_splits({"train": epitome}, identifiers_dir, tmp_path / "out", CFG, RES)


def test_an_empty_split_gives_an_empty_labelled_table(
    demo: PreparedData, identifiers_dir: Path, tmp_path: Path
) -> None:
    empty = demo.ed["valid"].select([])
    stats = label_splits({"test": empty}, identifiers_dir, tmp_path, CFG, RES)
    table = pq.read_table(tmp_path / "test.parquet")
    assert table.num_rows == 0 and table.column_names == ORIGINAL + level_columns()
    assert stats["splits"]["test"]["levels"]["ER"]["counts"] == {"0": 0, "1": 0, "2": 0}
