"""The synthetic demo dataset: formats, counts, determinism and label/text consistency."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from pipeline.data.demo import (
    ED_HEADER,
    EPITOME_FILES,
    EPITOME_HEADER,
    MECHANISMS,
    write_demo_data,
)
from pipeline.data.demo_text import ER_STRONG, ER_WEAK, EX_WEAK, IP_WEAK

ED_EMOTIONS = {
    *"afraid angry annoyed anticipating anxious apprehensive ashamed caring confident content devastated".split(),
    *"disappointed disgusted embarrassed excited faithful furious grateful guilty hopeful impressed".split(),
    *"jealous joyful lonely nostalgic prepared proud sad sentimental surprised terrified trusting".split(),
}
ALL_FILES = (
    "README.md",
    "empatheticdialogues/train.csv",
    "empatheticdialogues/valid.csv",
    *(f"epitome/{name}" for name in EPITOME_FILES.values()),
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("demo")
    write_demo_data(dest)
    return dest


def ed_rows(path: Path) -> list[list[str]]:
    """Split the raw ED file the way its official readers do: on every comma."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == ",".join(ED_HEADER)
    assert lines[-1] == "", "file ends with a newline"
    return [line.split(",") for line in lines[1:-1]]


def conversations(rows: list[list[str]]) -> dict[str, list[list[str]]]:
    convs: dict[str, list[list[str]]] = {}
    for row in rows:
        convs.setdefault(row[0], []).append(row)
    return convs


def epitome_rows(demo: Path, mechanism: str) -> list[dict[str, str]]:
    with (demo / "epitome" / EPITOME_FILES[mechanism]).open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == EPITOME_HEADER
        return list(reader)


def test_files_exist_and_readme_says_synthetic(demo: Path) -> None:
    for rel in ALL_FILES:
        assert (demo / rel).is_file(), rel
    readme = (demo / "README.md").read_text(encoding="utf-8")
    assert "Synthetic DEMO data" in readme and "not for research" in readme
    assert not list(demo.rglob("*.tmp")), "no temporary files left behind"


def test_deterministic_and_idempotent(demo: Path, tmp_path: Path) -> None:
    write_demo_data(tmp_path)
    write_demo_data(tmp_path)  # rewriting in place changes nothing
    for rel in ALL_FILES:
        assert (tmp_path / rel).read_bytes() == (demo / rel).read_bytes(), rel


def test_other_seed_gives_other_data(demo: Path, tmp_path: Path) -> None:
    write_demo_data(tmp_path, seed=1)
    assert (tmp_path / "empatheticdialogues/train.csv").read_bytes() != (
        demo / "empatheticdialogues/train.csv"
    ).read_bytes()


@pytest.mark.parametrize(("split", "min_listener_turns"), [("train", 200), ("valid", 40)])
def test_ed_official_format(demo: Path, split: str, min_listener_turns: int) -> None:
    rows = ed_rows(demo / "empatheticdialogues" / f"{split}.csv")
    assert all(len(row) == len(ED_HEADER) for row in rows), "every line splits into exactly 8 fields"
    listener_turns = 0
    for conv_id, turns in conversations(rows).items():
        assert 2 <= len(turns) <= 6, conv_id
        assert [int(t[1]) for t in turns] == list(range(1, len(turns) + 1)), f"{conv_id}: contiguous, 1-based"
        assert len({(t[2], t[3], t[6]) for t in turns}) == 1, f"{conv_id}: context, prompt, selfeval fixed"
        assert turns[0][2] in ED_EMOTIONS
        speaker, listener = turns[0][4], turns[1][4]
        assert speaker.isdigit() and listener.isdigit() and speaker != listener
        for t in turns:
            assert t[4] == (speaker if int(t[1]) % 2 else listener), (
                f"{conv_id}: odd turns speaker, even listener"
            )
            assert t[5].strip() and t[3].strip()
            assert t[7] == ""
            assert '"' not in t[5]
        a, b = turns[0][6].split("_")
        assert all(x in "12345" for x in a.split("|") + b.split("|"))
        listener_turns += len(turns) // 2
    assert listener_turns >= min_listener_turns


def test_ed_valid_distinct_from_train(demo: Path) -> None:
    train = conversations(ed_rows(demo / "empatheticdialogues/train.csv"))
    valid = conversations(ed_rows(demo / "empatheticdialogues/valid.csv"))
    assert not set(train) & set(valid)
    assert not {t[0][3] for t in train.values()} & {t[0][3] for t in valid.values()}, "valid prompts are new"


def test_epitome_aligned_across_mechanisms(demo: Path) -> None:
    files = {m: epitome_rows(demo, m) for m in MECHANISMS}
    keys = [
        [(r["sp_id"], r["rp_id"], r["seeker_post"], r["response_post"]) for r in files[m]] for m in MECHANISMS
    ]
    assert keys[0] == keys[1] == keys[2]
    assert len(keys[0]) >= 150
    assert len({(sp, rp) for sp, rp, _, _ in keys[0]}) == len(keys[0]), "pairs are unique"


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_epitome_levels_and_rationales(demo: Path, mechanism: str) -> None:
    rows = epitome_rows(demo, mechanism)
    levels = Counter(r["level"] for r in rows)
    assert set(levels) == {"0", "1", "2"}
    assert all(n >= 0.15 * len(rows) for n in levels.values()), levels
    for r in rows:
        if r["level"] == "0":
            assert r["rationales"] == "", r
            continue
        assert r["rationales"].endswith("|"), r
        for span in r["rationales"].split("|")[:-1]:
            assert span and span in r["response_post"], (span, r["response_post"])


def test_ed_listener_turns_use_the_epitome_blocks(demo: Path) -> None:
    """Identifiers trained on the demo EPITOME should see the same kinds of blocks in demo ED responses."""
    rows = ed_rows(demo / "empatheticdialogues/train.csv")
    responses = [r[5].replace("_comma_", ",") for r in rows if int(r[1]) % 2 == 0]
    assert len(set(responses)) > 0.9 * len(responses), "responses are varied"
    for blocks in (ER_WEAK["neg"], ER_STRONG["pos"], IP_WEAK, EX_WEAK):
        assert any(b in text for b in blocks for text in responses), blocks
