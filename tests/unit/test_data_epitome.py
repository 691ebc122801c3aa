"""EPITOME parsing: join on ids, duplicate resolution, and the seeded stratified split."""

from __future__ import annotations

import csv
import random
from collections import Counter
from pathlib import Path

import pytest

from pipeline.data import EPITOME_FILES, EPITOME_SPLITS, DataError, EpitomeData, EpitomePair
from pipeline.data.epitome import level_distribution, read_epitome, resolve_level, split_epitome

FRACTIONS = (0.75, 0.05, 0.20)
HEADER = ["sp_id", "rp_id", "seeker_post", "response_post", "level", "rationales"]


def write_epitome(folder: Path, rows: dict[str, list[list[str]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for mech, name in EPITOME_FILES.items():
        with (folder / name).open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([HEADER, *rows[mech]])
    return folder


# ----------------------------------------------------------------------------- real shared data


def test_real_counts_and_duplicates_match_the_readme(real_epitome: EpitomeData) -> None:
    assert len(real_epitome.pairs) == 3_023
    assert len({(p.sp_id, p.rp_id) for p in real_epitome.pairs}) == 3_023
    assert {m: r.rows for m, r in real_epitome.reports.items()} == {"ER": 3_084, "IP": 3_084, "EX": 3_084}
    assert all(r.bad_rows == 0 for r in real_epitome.reports.values())
    for mech, conflicting in {"ER": 10, "IP": 10, "EX": 5}.items():
        assert real_epitome.duplicates[mech] == {"pairs": 60, "rows": 121, "conflicting": conflicting}
    assert len(real_epitome.conflicts) == 25


def test_real_conflicts_follow_the_documented_rule(real_epitome: EpitomeData) -> None:
    by_key = {(p.sp_id, p.rp_id): p for p in real_epitome.pairs}
    for c in real_epitome.conflicts:
        assert c.chosen == resolve_level(c.levels)
        assert by_key[(c.sp_id, c.rp_id)].levels[("ER", "IP", "EX").index(c.mechanism)] == c.chosen
    # the one non-tie: EX annotated 0, 0, 2 keeps the majority
    assert by_key[("7rmqzi", "dsy41wd")].ex_level == 0
    assert by_key[("5zfnq7", "dexpjft")].levels[::2] == (2, 2)


def test_real_levels_and_rationales(real_epitome: EpitomeData) -> None:
    dist = level_distribution(real_epitome.pairs)
    assert dist == {
        "ER": {"0": 2003, "1": 869, "2": 151},
        "IP": {"0": 1584, "1": 114, "2": 1325},
        "EX": {"0": 2549, "1": 102, "2": 372},
    }
    first = real_epitome.pairs[0]
    assert (first.sp_id, first.rp_id, first.er_level, first.er_rationales) == ("65m92s", "dgbdk7z", 0, "")
    assert all(p.seeker_post and p.response_post for p in real_epitome.pairs)
    assert all(p.er_rationales == "" for p in real_epitome.pairs if p.er_level == 0)


def test_real_split_sizes_disjoint_and_stratified(real_epitome: EpitomeData) -> None:
    pairs = real_epitome.pairs
    splits = split_epitome(pairs, FRACTIONS, seed=42)
    sizes = {name: len(v) for name, v in splits.items()}
    assert sizes == {"train": 2267, "dev": 151, "test": 605}
    keys = [{(p.sp_id, p.rp_id) for p in v} for v in splits.values()]
    assert sum(len(k) for k in keys) == len(pairs) == len(set().union(*keys))
    overall = Counter(p.levels for p in pairs)
    for name, fraction in zip(EPITOME_SPLITS, FRACTIONS, strict=True):
        counts = Counter(p.levels for p in splits[name])
        # every joint (ER, IP, EX) stratum is split in proportion, to within one pair
        assert all(abs(counts[s] - n * fraction) <= 1 for s, n in overall.items()), name
        for mech, dist in level_distribution(splits[name]).items():
            all_dist = level_distribution(pairs)[mech]
            for level, n in dist.items():
                assert abs(n / len(splits[name]) - all_dist[level] / len(pairs)) < 0.02, (name, mech, level)


def test_real_split_is_deterministic_and_seeded(real_epitome: EpitomeData) -> None:
    pairs = real_epitome.pairs
    a = split_epitome(pairs, FRACTIONS, seed=42)
    shuffled = list(pairs)
    random.Random(0).shuffle(shuffled)
    assert split_epitome(shuffled, FRACTIONS, seed=42) == a
    other = split_epitome(pairs, FRACTIONS, seed=43)
    assert {k: len(v) for k, v in other.items()} == {k: len(v) for k, v in a.items()}
    assert {p.rp_id for p in other["test"]} != {p.rp_id for p in a["test"]}


# ----------------------------------------------------------------------------- rules on small files


@pytest.mark.parametrize(
    ("levels", "chosen"),
    [((0,), 0), ((0, 1), 1), ((1, 0), 1), ((2, 1), 2), ((0, 0, 2), 0), ((2, 2, 0, 0), 2), ((1, 1, 2), 1)],
)
def test_resolve_level(levels: tuple[int, ...], chosen: int) -> None:
    assert resolve_level(levels) == chosen


def test_join_is_on_ids_not_text(tmp_path: Path) -> None:
    rows = {
        "ER": [["s1", "r1", "Help me", "I hear you.  Hang on", "1", "I hear you|"]],
        "IP": [["s1", "r1", "Help  me ", "I hear you. Hang on", "0", ""]],
        "EX": [["s1", "r1", "Help me", " I hear you. Hang on", "2", "Hang on|"]],
    }
    (pair,) = read_epitome(write_epitome(tmp_path, rows)).pairs
    assert pair == EpitomePair(
        "s1", "r1", "Help me", "I hear you.  Hang on", 1, 0, 2, "I hear you|", "", "Hang on|"
    )


def test_rationales_come_from_the_row_with_the_chosen_level(tmp_path: Path) -> None:
    rows = {
        "ER": [["s", "r", "x", "y", "0", ""], ["s", "r", "x", "y", "1", "y|"]],
        "IP": [["s", "r", "x", "y", "0", ""], ["s", "r", "x", "y", "0", ""]],
        "EX": [["s", "r", "x", "y", "2", "y|"], ["s", "r", "x", "y", "0", ""]],
    }
    data = read_epitome(write_epitome(tmp_path, rows))
    (pair,) = data.pairs
    assert (pair.levels, pair.er_rationales, pair.ex_rationales) == ((1, 0, 2), "y|", "y|")
    assert {c.mechanism for c in data.conflicts} == {"ER", "EX"}
    assert data.duplicates["IP"] == {"pairs": 1, "rows": 2, "conflicting": 0}


def test_pair_missing_from_one_file(tmp_path: Path) -> None:
    full = [["s1", "r1", "a", "b", "0", ""], ["s2", "r2", "c", "d", "0", ""]]
    folder = write_epitome(tmp_path, {"ER": full, "IP": full[:1], "EX": full})
    with pytest.raises(
        DataError, match=r"emotional-reactions-reddit\.csv, line 3, column 'rp_id': .*no row in interp"
    ):
        read_epitome(folder)
    data = read_epitome(folder, skip_bad_rows=True)
    assert [p.sp_id for p in data.pairs] == ["s1"]
    assert data.reports["ER"].bad_rows == 1


def test_split_handles_tiny_inputs_and_rejects_bad_fractions() -> None:
    pairs = [EpitomePair(f"s{i}", f"r{i}", "a", "b", i % 3, 0, 0, "", "", "") for i in range(7)]
    splits = split_epitome(pairs, FRACTIONS, seed=1)
    assert sum(len(v) for v in splits.values()) == 7
    assert split_epitome([], FRACTIONS, seed=1) == {"train": [], "dev": [], "test": []}
    with pytest.raises(ValueError, match="summing to 1"):
        split_epitome(pairs, (0.5, 0.2, 0.2), seed=1)


def test_demo_data_parses_cleanly(tmp_path: Path) -> None:
    from pipeline.data.demo import write_demo_data

    write_demo_data(tmp_path)
    data = read_epitome(tmp_path / "epitome")
    assert data.pairs and all(r.bad_rows == 0 for r in data.reports.values())
    splits = split_epitome(data.pairs, FRACTIONS, seed=42)
    assert sum(len(v) for v in splits.values()) == len(data.pairs)
