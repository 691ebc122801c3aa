"""EmpatheticDialogues parsing: real shared files, the official raw format, demo data, context building."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from pipeline.config import DataConfig
from pipeline.data import EDSplit, parse_ed, parse_ed_split, read_conversations
from pipeline.data.ed import Turn, format_context

OFFICIAL_HEADER = "conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags"


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- real shared data


def test_real_counts_match_the_readme(real_ed: dict[str, EDSplit]) -> None:
    assert len(real_ed["train"].examples) == 40_254
    assert len(real_ed["valid"].examples) == 5_738
    assert real_ed["train"].conversations == 19_533
    assert real_ed["valid"].conversations == 2_770
    for split in real_ed.values():
        assert split.report.bad_rows == 0
        assert split.report.counters.get("empty_turns", 0) == 0
    assert real_ed["train"].report.rows == 84_169
    assert real_ed["valid"].report.rows == 12_078


def test_real_first_conversation_matches_the_readme_sample(real_ed: dict[str, EDSplit]) -> None:
    first, second = real_ed["train"].examples[:2]
    assert (first.conv_id, first.turn, first.emotion) == ("hit:0_conv:1", 2, "sentimental")
    assert first.response == "Was this a friend you were in love with, or just a best friend?"
    assert first.situation.endswith("There was a lot of people, but it only felt like us in the world.")
    assert len(first.history) == 1 and first.history[0].startswith("I remember going to see the fireworks")
    assert second.turn == 4 and second.response == "Where has she gone?"
    assert second.history[1] == first.response
    assert second.context == " </s> ".join(second.history)


def test_real_text_is_decoded_and_nonempty(real_ed: dict[str, EDSplit]) -> None:
    for split in real_ed.values():
        for ex in split.examples:
            assert ex.response and ex.context and ex.history
            assert (
                "_comma_" not in ex.response and "_comma_" not in ex.context and "_comma_" not in ex.situation
            )


def test_real_responses_agree_with_the_csv_module(shared_data: Path, real_ed: dict[str, EDSplit]) -> None:
    """An independent reader (csv.DictReader) sees the same listener turns, quotes included."""
    for split in ("train", "valid"):
        with (shared_data / "empatheticdialogues" / f"{split}.csv").open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["speaker_role"] == "listener"]
        expected = [
            (r["conv_id"], int(r["utterance_idx"]), r["utterance"].replace("_comma_", ",")) for r in rows
        ]
        assert [(e.conv_id, e.turn, e.response) for e in real_ed[split].examples] == expected
    assert sum('"' in e for *_, e in expected) > 0


# ----------------------------------------------------------------------------- official raw format


def test_official_format_is_read_by_position(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.csv",
        [
            OFFICIAL_HEADER,
            "hit:1_conv:2,1,afraid,I was scared_comma_ really,51,It was dark_comma_ so dark.,5|5|5_2|2|5,",
            'hit:1_conv:2,2,afraid,I was scared_comma_ really,52,Oh no! What "happened"?,5|5|5_2|2|5,',
            "hit:1_conv:2,3,afraid,I was scared_comma_ really,51,A noise.,5|5|5_2|2|5,tag",
            # one field too many (an unencoded comma after the utterance), as in some official lines
            "hit:1_conv:2,4,afraid,I was scared_comma_ really,52,That sounds scary.,5|5|5_2|2|5,,extra",
            # selfeval and tags missing altogether
            "hit:2_conv:4,1,proud,I won,7,I won a prize",
            "hit:2_conv:4,2,proud,I won,8,Congrats_comma_ well done!",
        ],
    )
    cfg = DataConfig()
    split = parse_ed_split(path, cfg)
    assert [(e.conv_id, e.turn) for e in split.examples] == [
        ("hit:1_conv:2", 2),
        ("hit:1_conv:2", 4),
        ("hit:2_conv:4", 2),
    ]
    first, second, third = split.examples
    assert first.situation == "I was scared, really"
    assert first.history == ("It was dark, so dark.",)
    assert first.response == 'Oh no! What "happened"?'
    assert second.history == ("It was dark, so dark.", 'Oh no! What "happened"?', "A noise.")
    assert third.response == "Congrats, well done!"
    assert split.report.counters == {"extra_fields": 1}
    assert split.report.bad_rows == 0


def test_official_listener_is_decided_by_parity(tmp_path: Path) -> None:
    path = write(
        tmp_path / "valid.csv",
        [OFFICIAL_HEADER] + [f"hit:3_conv:6,{i},sad,p,{1 + i % 2},turn {i},," for i in range(1, 6)],
    )
    conversations, _ = read_conversations(path)
    assert [t.role for t in conversations[0].turns] == [
        "speaker",
        "listener",
        "speaker",
        "listener",
        "speaker",
    ]


def test_variant_quoted_fields_and_rows_out_of_order(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.csv",
        [
            "conv_id,utterance_idx,context,prompt,speaker_role,utterance",
            'c1,2,joyful,p,listener,"He said ""yes"", finally"',
            "c1,1,joyful,p,speaker,I proposed_comma_ and",
        ],
    )
    (example,) = parse_ed_split(path, DataConfig()).examples
    assert example.history == ("I proposed, and",)
    assert example.response == 'He said "yes", finally'


def test_empty_speaker_turn_is_dropped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(
        tmp_path / "train.csv",
        [
            "conv_id,utterance_idx,context,prompt,speaker_role,utterance",
            "c1,1,sad,p,speaker,",
            "c1,2,sad,p,listener,Are you ok?",
            "c1,3,sad,p,speaker,Not really.",
            "c1,4,sad,p,listener,I am sorry.",
        ],
    )
    with caplog.at_level(logging.INFO):
        split = parse_ed_split(path, DataConfig())
    assert [e.turn for e in split.examples] == [4]
    assert split.examples[0].history == ("Are you ok?", "Not really.")
    assert split.report.counters == {"empty_turns": 1, "responses_without_history": 1}
    assert "empty_turns=1" in caplog.text


def test_parse_ed_reads_the_configured_splits(tmp_path: Path) -> None:
    for split in ("train", "valid"):
        write(tmp_path / f"{split}.csv", [OFFICIAL_HEADER, "c,1,sad,p,1,hi,,", "c,2,sad,p,2,hello,,"])
    parsed = parse_ed(tmp_path, DataConfig(splits=("train", "valid")))
    assert {s: len(v.examples) for s, v in parsed.items()} == {"train": 1, "valid": 1}


# ----------------------------------------------------------------------------- context building

HISTORY = [
    Turn(1, "speaker", "I lost my dog."),
    Turn(2, "listener", "Oh no."),
    Turn(3, "speaker", "He ran away."),
]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "I lost my dog. </s> Oh no. </s> He ran away."),
        ({"history_turns": 2}, "Oh no. </s> He ran away."),
        ({"history_turns": 5, "turn_separator": " | "}, "I lost my dog. | Oh no. | He ran away."),
        ({"history_turns": 1, "speaker_tags": True}, "Speaker: He ran away."),
        (
            {"history_turns": 2, "speaker_tags": True, "prepend_emotion": True, "turn_separator": "\n"},
            "Emotion: sad\nListener: Oh no.\nSpeaker: He ran away.",
        ),
    ],
)
def test_format_context(overrides: dict[str, object], expected: str) -> None:
    cfg = DataConfig(**overrides)  # type: ignore[arg-type]
    assert format_context(HISTORY, "sad", cfg) == expected


def test_history_keeps_all_turns_while_context_keeps_the_last_n(tmp_path: Path) -> None:
    lines = [OFFICIAL_HEADER] + [f"c,{i},sad,p,{i % 2},t{i},," for i in range(1, 7)]
    examples = parse_ed_split(write(tmp_path / "train.csv", lines), DataConfig(history_turns=2)).examples
    assert examples[-1].history == ("t1", "t2", "t3", "t4", "t5")
    assert examples[-1].context == "t4 </s> t5"


# ----------------------------------------------------------------------------- demo data


def test_demo_data_parses_cleanly(tmp_path: Path) -> None:
    from pipeline.data.demo import write_demo_data

    write_demo_data(tmp_path)
    parsed = parse_ed(tmp_path / "empatheticdialogues", DataConfig())
    for split in parsed.values():
        assert split.examples and split.report.bad_rows == 0
        assert all(e.response and e.history for e in split.examples)
        assert all("_comma_" not in e.response for e in split.examples)
