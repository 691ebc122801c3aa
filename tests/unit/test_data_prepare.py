"""``prepare_datasets``: source resolution, Parquet cache (keys, hits, atomic writes) and stats."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import pipeline.data.prepare as prepare
from pipeline.config import DataConfig
from pipeline.data import DataError, prepare_datasets

ED_HEADER = "conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags"


@pytest.fixture
def local_cfg(tmp_path: Path, shared_data: Path) -> DataConfig:
    """Small official-format ED files in tmp, the real (read-only) EPITOME files."""
    ed = tmp_path / "ed"
    ed.mkdir()
    for split, n in (("train", 12), ("valid", 3)):
        lines = [ED_HEADER]
        for c in range(n):
            lines += [
                f"hit:{c}_conv:{c},{i},sad,why_comma_ me,{i % 2},{split} {c} turn {i},," for i in (1, 2, 3, 4)
            ]
        (ed / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return DataConfig(
        source="local",
        ed_path=str(ed),
        epitome_path=str(shared_data / "epitome"),
        cache_dir=str(tmp_path / "cache"),
    )


def test_local_prepare_builds_datasets_and_stats(local_cfg: DataConfig) -> None:
    data = prepare_datasets(local_cfg)
    assert {s: len(d) for s, d in data.ed.items()} == {"train": 24, "valid": 6}
    assert {s: len(d) for s, d in data.epitome.items()} == {"train": 2267, "dev": 151, "test": 605}
    row = data.ed["train"][1]
    assert row["history"] == ["train 0 turn 1", "train 0 turn 2", "train 0 turn 3"]
    assert (row["turn"], row["response"], row["situation"]) == (4, "train 0 turn 4", "why, me")
    assert data.epitome["dev"].column_names == [
        "sp_id", "rp_id", "seeker_post", "response_post", "er_level", "ip_level", "ex_level",
        "er_rationales", "ip_rationales", "ex_rationales",
    ]  # fmt: skip
    stats = json.loads((data.path / "stats.json").read_text())
    assert stats == data.stats
    assert stats["ed"]["train"] == {"conversations": 12, "examples": 24, "kept": 24}
    assert stats["epitome"]["pairs"] == 3023 and stats["epitome"]["splits"]["test"] == 605
    assert stats["epitome"]["levels"]["all"]["ER"] == {"0": 2003, "1": 869, "2": 151}
    assert sum(stats["epitome"]["levels"]["dev"]["IP"].values()) == 151
    assert (
        stats["epitome"]["duplicates"]["EX"]["conflicting"] == 5 and len(stats["epitome"]["conflicts"]) == 25
    )
    assert stats["bad_rows"] == 0 and set(stats["reports"]) == {
        "ed/train.csv", "ed/valid.csv", "epitome/emotional-reactions-reddit.csv",
        "epitome/interpretations-reddit.csv", "epitome/explorations-reddit.csv",
    }  # fmt: skip


def test_second_call_is_a_cache_hit(
    local_cfg: DataConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = prepare_datasets(local_cfg)

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed again despite a cache entry")

    monkeypatch.setattr(prepare, "build", no_build)
    with caplog.at_level(logging.INFO, logger="pipeline.data.prepare"):
        second = prepare_datasets(local_cfg)
    assert "cache hit" in caplog.text
    assert second.path == first.path and second.stats == first.stats
    assert second.ed["train"].to_list() == first.ed["train"].to_list()
    entries = list(Path(local_cfg.cache_dir, "prepared").iterdir())
    assert entries == [first.path], "no temporary folders left behind"


def test_cache_key_follows_config_and_source_files(local_cfg: DataConfig) -> None:
    base = prepare_datasets(local_cfg).path
    assert prepare_datasets(replace(local_cfg, history_turns=1)).path != base
    moved = shutil.copytree(local_cfg.ed_path or "", Path(local_cfg.cache_dir).parent / "ed-copy")
    assert prepare_datasets(replace(local_cfg, ed_path=str(moved))).path == base, "keyed by content, not path"
    with Path(local_cfg.ed_path or "", "valid.csv").open("a") as f:
        f.write("hit:99_conv:99,1,sad,p,1,new,,\nhit:99_conv:99,2,sad,p,2,reply,,\n")
    changed = prepare_datasets(local_cfg)
    assert changed.path != base and len(changed.ed["valid"]) == 7


def test_refresh_rebuilds(local_cfg: DataConfig, caplog: pytest.LogCaptureFixture) -> None:
    prepare_datasets(local_cfg)
    with caplog.at_level(logging.INFO, logger="pipeline.data.prepare"):
        again = prepare_datasets(local_cfg, refresh=True)
    assert "cache miss" in caplog.text and len(again.ed["train"]) == 24


def test_max_examples_is_a_seeded_subset_in_file_order(local_cfg: DataConfig) -> None:
    capped = prepare_datasets(replace(local_cfg, max_examples=5))
    assert {s: len(d) for s, d in capped.ed.items()} == {"train": 5, "valid": 5}
    assert {s: len(d) for s, d in capped.epitome.items()} == {"train": 5, "dev": 5, "test": 5}
    keys = [(r["conv_id"], r["turn"]) for r in capped.ed["train"]]
    assert keys == sorted(keys, key=lambda k: (int(k[0].split(":")[-1]), k[1]))
    assert capped.stats["ed"]["train"] == {"conversations": 12, "examples": 24, "kept": 5}
    again = prepare_datasets(replace(local_cfg, max_examples=5), refresh=True)
    assert again.ed["train"].to_list() == capped.ed["train"].to_list()


def test_missing_local_file_is_a_clear_error(local_cfg: DataConfig) -> None:
    with pytest.raises(DataError, match=r"test\.csv: file not found\. Fix: point data\.ed_path"):
        prepare_datasets(replace(local_cfg, splits=("train", "test")))
    with pytest.raises(DataError, match=r"needs data\.ed_path and data\.epitome_path"):
        prepare_datasets(replace(local_cfg, ed_path=None))


def test_demo_source_is_written_once_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = DataConfig(source="demo", cache_dir=str(tmp_path / "cache"))
    first = prepare_datasets(cfg)
    assert (tmp_path / "cache" / "demo-src" / "empatheticdialogues" / "train.csv").is_file()
    assert len(first.ed["train"]) > 0 and len(first.epitome["train"]) > 0
    assert first.stats["bad_rows"] == 0

    def no_demo(dest: Path) -> None:
        raise AssertionError("demo data written twice")

    monkeypatch.setattr(prepare, "write_demo_data", no_demo)
    with caplog.at_level(logging.INFO, logger="pipeline.data.prepare"):
        second = prepare_datasets(cfg)
    assert "cache hit" in caplog.text and second.path == first.path


def test_cache_dir_expands_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    data = prepare_datasets(DataConfig(source="demo", cache_dir="~/emprl-cache"))
    assert data.path.is_relative_to(tmp_path / "emprl-cache")
