"""Bad input fails with file, line and column, or, with ``skip_bad_rows``, is skipped and counted."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.config import DataConfig
from pipeline.data import EPITOME_FILES, DataError, ParseReport, parse_ed_split, read_epitome

VARIANT = b"conv_id,utterance_idx,context,prompt,speaker_role,utterance\n"
OFFICIAL = b"conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags\n"
EPITOME = b"sp_id,rp_id,seeker_post,response_post,level,rationales\n"


def ed_file(header: bytes, bad: bytes, *, official: bool = False) -> bytes:
    """Two good conversations (a, b) around one bad line (line 4)."""

    def line(conv: bytes, i: int) -> bytes:
        role = (b"1" if i % 2 else b"2") if official else (b"speaker" if i % 2 else b"listener")
        return b"%s,%d,sad,p,%s,text %d%s" % (conv, i, role, i, b",," if official else b"")

    return header + b"\n".join([line(b"a", 1), line(b"a", 2), bad, line(b"b", 1), line(b"b", 2)]) + b"\n"


def epitome_folder(tmp_path: Path, bad: bytes | None = None, header: bytes = EPITOME) -> Path:
    """Three good pairs in every file; ``bad`` replaces line 3 (pair s2) of the ER file."""
    lines = [b"s%d,r%d,seeker %d,response %d,0," % (i, i, i, i) for i in (1, 2, 3)]
    for mech, name in EPITOME_FILES.items():
        body = list(lines)
        if mech == "ER" and bad is not None:
            body[1] = bad
        (tmp_path / name).write_bytes(header + b"\n".join(body))
    return tmp_path


def parse_ed(path: Path, skip: bool) -> ParseReport:
    split = parse_ed_split(path, DataConfig(skip_bad_rows=skip))
    assert [e.conv_id for e in split.examples] == ["a", "b"]
    return split.report


def parse_epitome(folder: Path, skip: bool) -> ParseReport:
    data = read_epitome(folder, skip_bad_rows=skip)
    assert [p.sp_id for p in data.pairs] == ["s1", "s3"]
    return data.reports["ER"]


# (name, build(tmp_path) -> path, parse, expected line, expected column, problem pattern)
Case = tuple[str, Callable[[Path], Path], Callable[[Path, bool], ParseReport], int, str | None, str]


def _ed(header: bytes, bad: bytes, official: bool = False) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        path = tmp / "train.csv"
        path.write_bytes(ed_file(header, bad, official=official))
        return path

    return build


def _ep(bad: bytes) -> Callable[[Path], Path]:
    return lambda tmp: epitome_folder(tmp, bad)


def _ed_case(name: str, bad: bytes, column: str | None, problem: str, official: bool = False) -> Case:
    """A bad line 4 of an ED file (the variant header, or with ``official`` the official one)."""
    return (name, _ed(OFFICIAL if official else VARIANT, bad, official), parse_ed, 4, column, problem)


def _ep_case(name: str, bad: bytes, column: str | None, problem: str) -> Case:
    """A bad line 3 of the EPITOME ER file."""
    return (name, _ep(bad), parse_epitome, 3, column, problem)


CASES: list[Case] = [
    _ed_case("ed empty response", b"c,2,sad,p,listener,  ", "utterance", "empty listener response"),
    _ed_case("ed official empty response", b"c,2,sad,p,2,,,", "utterance", "empty listener", official=True),
    _ed_case("ed too few fields", b"c,2,sad,p,listener", "utterance", "wrong number of fields"),
    _ed_case("ed too many fields", b"c,2,sad,p,listener,a,b", "utterance", "wrong number of fields"),
    _ed_case("ed official too few", b"c,2,sad,p,2", "utterance", "wrong number of fields", official=True),
    _ed_case("ed unbalanced quote", b'c,2,sad,p,listener,"oops', None, "malformed CSV"),
    _ed_case("ed bad utf-8", b"c,2,sad,p,listener,caf\xe9 \xff", "utterance", "invalid UTF-8"),
    _ed_case("ed bad turn number", b"c,x,sad,p,listener,hi", "utterance_idx", "not a turn number"),
    _ed_case("ed bad role", b"c,2,sad,p,helper,hi", "speaker_role", "'helper' is not"),
    _ed_case("ed duplicate turn", b"a,2,sad,p,listener,again", "utterance_idx", "appears twice"),
    _ed_case("ed empty emotion", b"c,2,,p,listener,hi", "context", "empty emotion"),
    _ep_case("epitome level 3", b"s9,r9,a,b,3,", "level", "invalid level '3'"),
    _ep_case("epitome level x", b"s9,r9,a,b,x,", "level", "invalid level 'x'"),
    _ep_case("epitome empty response", b's9,r9,a," ",0,', "response_post", "empty response_post"),
    _ep_case("epitome too few fields", b"s9,r9,a,b,0", "rationales", "wrong number of fields"),
    _ep_case("epitome bad quote", b's9,r9,"a"b,c,0,', None, "malformed CSV"),
    _ep_case("epitome bad utf-8", b"s9,r9,\xc3\x28,b,0,", "seeker_post", "invalid UTF-8"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_row_fails_with_location(case: Case, tmp_path: Path) -> None:
    _, build, parse, line, column, problem = case
    path = build(tmp_path)
    with pytest.raises(DataError) as info:
        parse(path, False)
    err = info.value
    assert (err.line, err.column) == (line, column)
    assert re.search(problem, err.problem)
    assert ("train.csv" if path.suffix else "emotional-reactions-reddit.csv") in str(err)
    assert f"line {line}" in str(err)
    if column:
        assert f"column '{column}'" in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_row_is_skipped_and_counted(case: Case, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, build, parse, line, column, problem = case
    with caplog.at_level("WARNING"):
        report = parse(build(tmp_path), True)
    assert report.bad_rows == 1
    (bad,) = report.examples
    assert (bad.line, bad.column) == (line, column) and re.search(problem, bad.problem)
    assert report.to_dict()["bad_rows"] == 1
    assert "skipped 1 bad rows" in caplog.text


@pytest.mark.parametrize("skip", [False, True])
def test_missing_column_always_fails(tmp_path: Path, skip: bool) -> None:
    """A header without a needed column makes every row unusable, so skipping does not apply."""
    path = tmp_path / "train.csv"
    path.write_bytes(b"conv_id,utterance_idx,context,prompt,speaker_role\nc,1,sad,p,speaker\n")
    with pytest.raises(DataError, match=r"train\.csv, line 1, column 'utterance': missing column"):
        parse_ed_split(path, DataConfig(skip_bad_rows=skip))
    path.write_bytes(b"conv_id,utterance_idx,context,prompt,utterance\nc,1,sad,p,hi\n")
    with pytest.raises(DataError, match=r"column 'speaker_role': missing column"):
        parse_ed_split(path, DataConfig(skip_bad_rows=skip))
    folder = epitome_folder(tmp_path, header=b"sp_id,rp_id,seeker_post,response_post,rationales\n")
    with pytest.raises(DataError, match=r"reddit\.csv, line 1, column 'level': missing column"):
        read_epitome(folder, skip_bad_rows=skip)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        parse_ed_split(tmp_path / "nope.csv", DataConfig())
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.csv, line 1: file is empty"):
        parse_ed_split(tmp_path / "empty.csv", DataConfig())


def test_many_bad_rows_are_all_counted(tmp_path: Path) -> None:
    lines = [
        b"c%d,1,sad,p,speaker,hi\nc%d,2,sad,p,listener,%s" % (i, i, b"" if i % 2 else b"ok")
        for i in range(60)
    ]
    path = tmp_path / "train.csv"
    path.write_bytes(VARIANT + b"\n".join(lines) + b"\r\n\n")
    split = parse_ed_split(path, DataConfig(skip_bad_rows=True))
    assert (len(split.examples), split.report.bad_rows, len(split.report.examples)) == (30, 30, 20)
    assert split.report.rows == 120
