"""EmpatheticDialogues (Rashkin et al. 2019): conversations and (history → listener response) examples.

Reads the official raw CSV (``speaker_idx``; listener = even ``utterance_idx``) and the
RFC-CSV variant kept in shared data (``speaker_role``); the header decides which. Every
listener turn with some history before it becomes one example.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.config import DataConfig
from pipeline.data.errors import DataError, ParseReport
from pipeline.data.rows import CsvLines, Record

logger = logging.getLogger(__name__)

Role = Literal["speaker", "listener"]

CORE_COLUMNS = ("conv_id", "utterance_idx", "context", "prompt", "utterance")
"""Columns both formats need."""
OFFICIAL_COLUMNS = (
    "conv_id",
    "utterance_idx",
    "context",
    "prompt",
    "speaker_idx",
    "utterance",
    "selfeval",
    "tags",
)
"""Header of the official release; lines are split on every comma and read by position."""
ED_SPLITS = ("train", "valid", "test")


def decode(text: str) -> str:
    """ED writes every comma as ``_comma_``; turn it back and trim the ends."""
    return text.replace("_comma_", ",").strip()


@dataclass(frozen=True)
class Turn:
    """One utterance of a conversation, decoded."""

    idx: int
    role: Role
    text: str


@dataclass
class Conversation:
    """A speaker–listener conversation; ``turns`` sorted by ``utterance_idx``."""

    conv_id: str
    emotion: str
    situation: str
    turns: list[Turn] = field(default_factory=list)


@dataclass(frozen=True)
class EDExample:
    """One listener turn and what came before it (the unit of SFT and of PPO prompts)."""

    conv_id: str
    turn: int
    """``utterance_idx`` of the response."""
    emotion: str
    situation: str
    """The speaker's situation description (ED ``prompt``), decoded."""
    history: tuple[str, ...]
    """Every earlier non-empty turn, oldest first, decoded."""
    context: str
    """The model input built from ``history`` by :func:`format_context`."""
    response: str

    def to_dict(self) -> dict[str, Any]:
        """A plain row (``history`` as a list) for Arrow/Parquet."""
        return {
            "conv_id": self.conv_id,
            "turn": self.turn,
            "emotion": self.emotion,
            "situation": self.situation,
            "history": list(self.history),
            "context": self.context,
            "response": self.response,
        }


@dataclass(frozen=True)
class EDSplit:
    """The examples of one split file plus what parsing it did."""

    examples: list[EDExample]
    conversations: int
    report: ParseReport


def format_context(history: Sequence[Turn], emotion: str, cfg: DataConfig) -> str:
    """Join the last ``cfg.history_turns`` turns (0: all) with ``cfg.turn_separator``.

    ``speaker_tags`` prefixes each turn with ``Speaker:`` / ``Listener:``;
    ``prepend_emotion`` puts ``Emotion: <label>`` first, as one more separated segment.
    """
    kept = history[-cfg.history_turns :] if cfg.history_turns else history
    parts = [f"{t.role.capitalize()}: {t.text}" if cfg.speaker_tags else t.text for t in kept]
    if cfg.prepend_emotion:
        parts.insert(0, f"Emotion: {emotion}")
    return cfg.turn_separator.join(parts)


def read_conversations(path: Path, *, skip_bad_rows: bool = False) -> tuple[list[Conversation], ParseReport]:
    """Parse one ED split file into conversations, in order of first appearance.

    Rules: ``utterance_idx`` must be an integer >= 1 and unique within its conversation;
    the emotion (``context``) must be non-empty. An empty *listener* utterance is a bad
    row (it would be a response). An empty *speaker* utterance is not an error: the turn
    is dropped from histories and counted as ``empty_turns``. Official-format lines with
    more than 8 comma-separated fields are cut to 8, as ParlAI does, and counted as
    ``extra_fields``.
    """
    lines = CsvLines(path)
    report = ParseReport(str(path), skip_bad_rows=skip_bad_rows)
    official = "speaker_idx" in lines.header and "speaker_role" not in lines.header
    if not official and "speaker_role" not in lines.header:
        raise DataError(
            path,
            f"missing column (header has {lines.header})",
            line=1,
            column="speaker_role",
            fix=f"use the official header {','.join(OFFICIAL_COLUMNS)} or name a speaker_role column",
        )
    lines.require(CORE_COLUMNS)
    records = (
        lines.records(report, splitting="comma", min_fields=lines.header.index("utterance") + 1)
        if official
        else lines.records(report)
    )
    conversations: dict[str, Conversation] = {}
    seen: set[tuple[str, int]] = set()
    for record in records:
        try:
            conv_id, turn = _turn(record, path, official, seen)
        except DataError as exc:
            report.reject(exc)
            continue
        seen.add((conv_id, turn.idx))
        conv = conversations.get(conv_id)
        if conv is None:
            conv = conversations[conv_id] = Conversation(
                conv_id, record["context"].strip(), decode(record["prompt"])
            )
            if not conv.situation:
                report.count("empty_prompts")
        if turn.text:
            conv.turns.append(turn)
        else:
            report.count("empty_turns")
    for conv in conversations.values():
        conv.turns.sort(key=lambda t: t.idx)
    return list(conversations.values()), report


def _turn(record: Record, path: Path, official: bool, seen: set[tuple[str, int]]) -> tuple[str, Turn]:
    def bad(column: str, problem: str, fix: str) -> DataError:
        return DataError(path, problem, line=record.line, column=column, fix=fix)

    conv_id = record["conv_id"].strip()
    if not conv_id:
        raise bad("conv_id", "empty conversation id", "every row needs its conversation's id")
    raw_idx = record["utterance_idx"].strip()
    if not raw_idx.isdigit() or int(raw_idx) < 1:
        raise bad(
            "utterance_idx", f"{raw_idx!r} is not a turn number >= 1", "use 1, 2, 3, ... per conversation"
        )
    idx = int(raw_idx)
    if (conv_id, idx) in seen:
        raise bad("utterance_idx", f"turn {idx} of {conv_id} appears twice", "remove the duplicate row")
    if not record["context"].strip():
        raise bad("context", "empty emotion label", "give every row its conversation's emotion")
    role: Role
    if official:
        role = "listener" if idx % 2 == 0 else "speaker"
    else:
        value = record["speaker_role"].strip().lower()
        if value not in ("speaker", "listener"):
            raise bad("speaker_role", f"{value!r} is not 'speaker' or 'listener'", "use speaker or listener")
        role = "listener" if value == "listener" else "speaker"
    text = decode(record["utterance"])
    if not text and role == "listener":
        raise bad("utterance", "empty listener response", "drop the row or pass data.skip_bad_rows=true")
    return conv_id, Turn(idx, role, text)


def build_examples(
    conversations: Sequence[Conversation], cfg: DataConfig, report: ParseReport
) -> list[EDExample]:
    """One example per listener turn that has at least one earlier turn.

    A listener turn with no earlier non-empty turn has nothing to respond to; it is
    dropped and counted as ``responses_without_history``.
    """
    examples = []
    for conv in conversations:
        for i, turn in enumerate(conv.turns):
            if turn.role != "listener":
                continue
            history = conv.turns[:i]
            if not history:
                report.count("responses_without_history")
                continue
            examples.append(
                EDExample(
                    conv_id=conv.conv_id,
                    turn=turn.idx,
                    emotion=conv.emotion,
                    situation=conv.situation,
                    history=tuple(t.text for t in history),
                    context=format_context(history, conv.emotion, cfg),
                    response=turn.text,
                )
            )
    return examples


def parse_ed_split(path: Path, cfg: DataConfig) -> EDSplit:
    """Read one split file and build its examples (``cfg.skip_bad_rows`` applies)."""
    conversations, report = read_conversations(path, skip_bad_rows=cfg.skip_bad_rows)
    examples = build_examples(conversations, cfg, report)
    report.log()
    logger.info("%s: %d conversations -> %d examples", path, len(conversations), len(examples))
    return EDSplit(examples, len(conversations), report)


def parse_ed(folder: Path, cfg: DataConfig) -> dict[str, EDSplit]:
    """Parse ``<folder>/<split>.csv`` for every split in ``cfg.splits``."""
    unknown = [s for s in cfg.splits if s not in ED_SPLITS]
    if unknown:
        raise DataError(
            folder, f"unknown split {unknown[0]!r}", fix=f"data.splits may name {list(ED_SPLITS)}"
        )
    return {split: parse_ed_split(folder / f"{split}.csv", cfg) for split in cfg.splits}
