"""Synthetic DEMO data for smoke runs, in the EmpatheticDialogues and EPITOME file formats.

All text is composed by this project from the templates in `pipeline.data.demo_text`; nothing is copied
from EmpatheticDialogues, EPITOME or any other dataset. Empathy levels follow from which response blocks
were used, so labels agree with the text. Not for research: it exists to exercise loaders and the loop.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pipeline.data.demo_text import (
    DETAIL_LEADS,
    EMOTIONS,
    ER_STRONG,
    ER_WEAK,
    EX_STRONG,
    EX_WEAK,
    IP_STRONG,
    IP_WEAK,
    NEUTRAL,
    OPENERS,
    SEEKER_CLOSINGS,
    SPEAKER_CLOSINGS,
    Emotion,
    Topic,
)
from pipeline.data.ed import OFFICIAL_COLUMNS

logger = logging.getLogger(__name__)

DEMO_SEED: Final = 20200
ED_HEADER: Final = OFFICIAL_COLUMNS
EPITOME_HEADER: Final = ("sp_id", "rp_id", "seeker_post", "response_post", "level", "rationales")
MECHANISMS: Final = ("ER", "IP", "EX")
EPITOME_FILES: Final = {
    "ER": "emotional-reactions-reddit.csv",
    "IP": "interpretations-reddit.csv",
    "EX": "explorations-reddit.csv",
}
TRAIN_TOPICS: Final = (0, 1)
"""Topic indices (per emotion) used by ED train, each in `TRAIN_CONVS_PER_TOPIC` conversations."""
TRAIN_CONVS_PER_TOPIC: Final = 2
VALID_TOPICS: Final = (2,)
"""ED valid uses topics train never sees."""
TURN_WEIGHTS: Final = {2: 1, 3: 1, 4: 4, 5: 2, 6: 2}
"""Turns per ED conversation and their relative frequency (ED itself is mostly 4 turns)."""
NEUTRAL_RATE: Final = 0.25
"""Chance of a non-empathic sentence in a response that already has blocks, so it is no level-0 tell."""

README: Final = """\
# Synthetic DEMO data (not for research)

Written by `pipeline.data.demo.write_demo_data` (seed {seed}). Every sentence was composed by the EmpRL
on Ray project from hand-written templates; nothing is copied from EmpatheticDialogues (Rashkin et al.
2019), EPITOME (Sharma et al. 2020) or any other dataset. The files only mimic those datasets' formats so
smoke runs and tests can exercise the loaders, identifiers and the PPO loop without the real data.

Do not report results on it: the text is repetitive and its empathy labels follow mechanically from
which template blocks a response contains.

- `empatheticdialogues/train.csv` ({train_convs} conversations, {train_turns} listener turns) and
  `valid.csv` ({valid_convs} conversations, {valid_turns} listener turns, on situations train does not
  use), in the official raw ED layout with every comma in text written as `_comma_`:
  `{ed_header}`
- `epitome/*-reddit.csv`: {pairs} seeker/response pairs, the same pairs in the same order in all three
  files, in the EPITOME layout: `{ep_header}`
  Levels 0/1/2: {levels}.
"""


@dataclass(frozen=True)
class Response:
    """A composed response and, per mechanism (ER, IP, EX), its level and rationale span."""

    text: str
    levels: tuple[int, int, int]
    spans: tuple[str, str, str]


def compose_response(
    rng: random.Random, emotion: Emotion, topic: Topic, levels: tuple[int, int, int]
) -> Response:
    """Build a response whose ER, IP and EX blocks realise `levels`; a span is "" where its level is 0."""
    if any(level not in (0, 1, 2) for level in levels):
        raise ValueError(f"demo response levels {levels}: each must be 0 (none), 1 (weak) or 2 (strong)")
    feel = rng.choice(emotion.feelings)
    val = emotion.valence
    weak_strong = ((ER_WEAK[val], ER_STRONG[val]), (IP_WEAK, IP_STRONG[val]), (EX_WEAK, EX_STRONG[val]))
    spans = tuple(
        rng.choice(blocks[level - 1]).format(feel=feel, about=topic.about, mine=topic.mine) if level else ""
        for blocks, level in zip(weak_strong, levels, strict=True)
    )
    parts = [s for s in spans[:2] if s]
    if not any(levels) or rng.random() < NEUTRAL_RATE:
        parts.append(rng.choice(NEUTRAL))
    if spans[2]:
        parts.append(spans[2])
    return Response(" ".join(parts), levels, (spans[0], spans[1], spans[2]))


def _random_levels(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(3), rng.randrange(3), rng.randrange(3))


def _continue(lead: str, sentence: str) -> str:
    """`lead` + `sentence`, lower-casing the sentence's first letter unless it is the pronoun I."""
    if not lead or sentence.startswith(("I ", "I'")):
        return lead + sentence
    return lead + sentence[0].lower() + sentence[1:]


def _ed_field(text: str, where: str) -> str:
    if any(c in text for c in '"\r\n'):
        raise ValueError(
            f"demo ED {where}: {text!r} has a quote or newline; raw ED lines are split on commas"
        )
    return text.replace(",", "_comma_")


def _ed_conversation(
    rng: random.Random, conv: int, name: str, topic: Topic, n_turns: int
) -> tuple[list[list[str]], int]:
    """Rows of one ED conversation (raw layout) and its number of listener turns."""
    emotion = EMOTIONS[name]
    conv_id = f"hit:{conv // 2}_conv:{conv}"
    speaker, listener = rng.sample(range(1, 400), 2)
    selfeval = "_".join("|".join(str(rng.choice((3, 4, 5, 5, 5))) for _ in range(3)) for _ in range(2))
    speaker_turns = (
        _continue(rng.choice(OPENERS[emotion.valence]), topic.situation),
        _continue(rng.choice(DETAIL_LEADS), topic.detail),
        rng.choice(SPEAKER_CLOSINGS[emotion.valence]),
    )
    rows = []
    for idx in range(1, n_turns + 1):
        if idx % 2:
            worker, text = speaker, speaker_turns[idx // 2]
        else:
            worker, text = listener, compose_response(rng, emotion, topic, _random_levels(rng)).text
        fields = (conv_id, str(idx), name, topic.situation, str(worker), text, selfeval, "")
        rows.append([_ed_field(f, f"conv {conv_id} turn {idx}") for f in fields])
    return rows, n_turns // 2


def _ed_split(rng: random.Random, plan: list[tuple[str, Topic]], first_conv: int) -> tuple[str, int, int]:
    """One ED split as file text, with its conversation and listener-turn counts."""
    turns, weights = list(TURN_WEIGHTS), list(TURN_WEIGHTS.values())
    lines = [",".join(ED_HEADER)]
    listener_turns = 0
    for i, (name, topic) in enumerate(plan):
        rows, n_listener = _ed_conversation(rng, first_conv + i, name, topic, rng.choices(turns, weights)[0])
        lines.extend(",".join(r) for r in rows)
        listener_turns += n_listener
    return "\n".join(lines) + "\n", len(plan), listener_turns


def _epitome(rng: random.Random) -> tuple[dict[str, str], list[list[int]]]:
    """The three EPITOME files as text (keyed by mechanism), and the level column of each."""
    posts = [(emotion, topic) for emotion in EMOTIONS.values() for topic in emotion.topics]
    rng.shuffle(posts)
    responses_per_post = [2 + i % 2 for i in range(len(posts))]
    n_pairs = sum(responses_per_post)
    levels: list[list[int]] = []
    for _ in MECHANISMS:  # exactly balanced per mechanism, drawn independently across mechanisms
        column = [i % 3 for i in range(n_pairs)]
        rng.shuffle(column)
        levels.append(column)
    buffers = {m: io.StringIO() for m in MECHANISMS}
    writers = {m: csv.writer(buffers[m]) for m in MECHANISMS}
    for writer in writers.values():
        writer.writerow(EPITOME_HEADER)
    pair = 0
    for sp, ((emotion, topic), n_responses) in enumerate(zip(posts, responses_per_post, strict=True)):
        post = " ".join((topic.situation, topic.detail, rng.choice(SEEKER_CLOSINGS[emotion.valence])))
        for _ in range(n_responses):
            response = compose_response(
                rng, emotion, topic, (levels[0][pair], levels[1][pair], levels[2][pair])
            )
            for m, level, span in zip(MECHANISMS, response.levels, response.spans, strict=True):
                rationale = f"{span}|" if level else ""
                writers[m].writerow(
                    (f"demosp{sp:03d}", f"demorp{pair:04d}", post, response.text, level, rationale)
                )
            pair += 1
    return {m: buffers[m].getvalue() for m in MECHANISMS}, levels


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_demo_data(dest: Path, *, seed: int = DEMO_SEED) -> None:
    """Write the synthetic demo ED and EPITOME files (and a README saying so) under `dest`.

    The output is a pure function of `seed`: rewriting gives byte-identical files.
    """
    train_plan = [
        (name, emotion.topics[t])
        for name, emotion in EMOTIONS.items()
        for t in TRAIN_TOPICS
        for _ in range(TRAIN_CONVS_PER_TOPIC)
    ]
    valid_plan = [(name, emotion.topics[t]) for name, emotion in EMOTIONS.items() for t in VALID_TOPICS]
    # One stream per output, so changing one part leaves the others as they were.
    random.Random(f"{seed}/ed-plan").shuffle(train_plan)
    random.Random(f"{seed}/ed-plan").shuffle(valid_plan)
    train, train_convs, train_turns = _ed_split(random.Random(f"{seed}/ed-train"), train_plan, 0)
    valid, valid_convs, valid_turns = _ed_split(random.Random(f"{seed}/ed-valid"), valid_plan, train_convs)
    epitome, levels = _epitome(random.Random(f"{seed}/epitome"))
    level_counts = ", ".join(
        f"{m} " + "/".join(str(column.count(v)) for v in range(3))
        for m, column in zip(MECHANISMS, levels, strict=True)
    )
    readme = README.format(
        seed=seed,
        ed_header=",".join(ED_HEADER),
        ep_header=",".join(EPITOME_HEADER),
        train_convs=train_convs,
        train_turns=train_turns,
        valid_convs=valid_convs,
        valid_turns=valid_turns,
        pairs=len(levels[0]),
        levels=level_counts,
    )
    files = {
        "README.md": readme,
        "empatheticdialogues/train.csv": train,
        "empatheticdialogues/valid.csv": valid,
        **{f"epitome/{EPITOME_FILES[m]}": text for m, text in epitome.items()},
    }
    for rel, text in files.items():
        _write_atomic(dest / rel, text.encode("utf-8"))
    logger.info(
        "wrote synthetic demo data to %s: ED train %d conversations / %d listener turns, "
        "valid %d / %d; EPITOME %d pairs (levels 0/1/2: %s)",
        dest,
        train_convs,
        train_turns,
        valid_convs,
        valid_turns,
        len(levels[0]),
        level_counts,
    )
