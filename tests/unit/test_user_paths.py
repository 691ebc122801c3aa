"""Every path a user types is made absolute at the command line, against the user's working directory,
before Ray (whose Tune trials run in their own folders) sees it; URIs are refused with a fix, and a sweep
with no best trial reports its first trial's root-cause error."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from jobs.cli.main import build_parser
from jobs.launch.options import config_from_args, user_path
from jobs.stages.tune.results import no_best_message, root_cause
from pipeline.config import ConfigError, load_config
from pipeline.config.paths import absolute, absolute_paths
from pipeline.layout import SweepDir


def test_absolute_keeps_uris_home_paths_and_empty() -> None:
    assert absolute("runs/demo", "/home/me") == "/home/me/runs/demo"
    assert absolute("./a/../b", "/w") == "/w/b"
    for text in ("/abs/path", "s3://bucket/x", "gs://b/y", "~/.cache/emprl", ""):
        assert absolute(text, "/w") == text


def test_config_paths_absolute_against_the_given_folder(tmp_path: Path) -> None:
    (tmp_path / "models" / "t5").mkdir(parents=True)
    cfg = load_config(
        "local",
        [
            "run.output_dir=runs",
            "data.ed_path=data/ed",
            "model.name_or_path=models/t5",
            "identifiers.encoder=t5-base",
        ],
    )
    out = absolute_paths(cfg, tmp_path)
    assert out.run.output_dir == str(tmp_path / "runs")
    assert out.data.ed_path == str(tmp_path / "data" / "ed")
    assert out.data.epitome_path is None
    assert out.data.cache_dir == "~/.cache/emprl"  # expanded on the node that opens it
    assert out.model.name_or_path == str(tmp_path / "models" / "t5")  # an existing local folder
    assert out.identifiers.encoder == "t5-base"  # no such folder here: a hub name
    assert absolute_paths(out, "/elsewhere") == out  # idempotent once absolute


def test_command_line_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_parser(["tune"]).parse_args(
        ["tune", "--run-dir", "runs/demo", "--space", "configs/sweeps/tiny.yaml", "run.output_dir=out"]
    )
    assert args.run_dir == tmp_path / "runs" / "demo"
    assert args.space == tmp_path / "configs" / "sweeps" / "tiny.yaml"
    assert config_from_args(args).run.output_dir == str(tmp_path / "out")
    args = build_parser(["evaluate"]).parse_args(
        ["evaluate", "--run-dir", "r", "--policy", "mine=p/policy", "--out", "e"]
    )
    assert args.policy == [("mine", tmp_path / "p" / "policy")] and args.out == tmp_path / "e"
    assert build_parser(["data"]).parse_args(["data", "download"]).dest == tmp_path / "data"


def test_a_uri_names_its_mirror_folder_and_a_bad_one_is_refused_with_a_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path))
    assert user_path("s3://bucket/x/") == tmp_path / "mirror" / "s3" / "bucket" / "x"
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown scheme 'ftp://'.*Fix: give a local"):
        user_path("ftp://host/x")


def test_uris_in_the_config_only_where_a_location_may_be_one() -> None:
    cfg = load_config("local", ["run.output_dir=s3://b/runs", "data.ed_path=gs://b/ed"])
    assert absolute_paths(cfg).run.output_dir == "s3://b/runs"
    for bad, message in [
        ("data.cache_dir=s3://b/cache", "must be a local path"),
        ("run.output_dir=hdfs://x/y", "unknown scheme"),
        ("model.name_or_path=s3://b/t5", "a model source is a hub name or a local folder"),
    ]:
        with pytest.raises(ConfigError, match=message):
            absolute_paths(load_config("local", [bad]))


def test_root_cause_of_a_remote_traceback() -> None:
    text = (
        "Failure # 1 (occurred at 2026-12-06)\n"
        "ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n"
        '  File "x.py", line 3, in f\n'
        "    raise EvaluationInputError(msg)\n"
        "pipeline.evaluation.suite.EvaluationInputError: no labelled 'valid' split at runs/demo/labeled/valid.parquet.\n"
        "Fix: label it\n"
    )
    assert root_cause(text) == (
        "pipeline.evaluation.suite.EvaluationInputError: no labelled 'valid' split at "
        "runs/demo/labeled/valid.parquet. Fix: label it"
    )
    assert root_cause("just a line\n") == "just a line"


def test_no_best_message_names_the_first_error_and_its_file(tmp_path: Path) -> None:
    sweep = SweepDir(tmp_path / "sweep")
    first = tmp_path / "sweep" / "t0" / "error.txt"
    failures = [(first, "ValueError: boom"), (tmp_path / "sweep" / "t1" / "error.txt", "ValueError: boom")]
    message = no_best_message("2 trial(s), 0 completed, 2 failed", failures, [], sweep)
    assert message.startswith("2 trial(s), 0 completed, 2 failed: no trial completed.")
    assert f"First trial's error: ValueError: boom (full traceback: {first})" in message
    assert "1 more error file(s)" in message
    constrained = no_best_message("3 trial(s), 3 completed, 0 failed", [], ["eval/perplexity<=40"], sweep)
    assert "no completed trial satisfies eval/perplexity<=40" in constrained


def test_a_command_probes_the_folder_it_writes_before_any_work(s3_bucket: str) -> None:
    """A missing bucket ends `emprl ppo` before it reads a single input, naming the bucket and the fix."""
    from jobs.cli.main import main

    with pytest.raises(
        SystemExit, match=r"storage error: .*bucket 'no-such-bucket-emprl' does not exist.*aws s3 mb"
    ):
        main(["ppo", "--run-dir", "s3://no-such-bucket-emprl/x"])
    with pytest.raises(SystemExit, match=r"storage error: .*bucket 'no-such-bucket-emprl' does not exist"):
        main(["run", "run.output_dir=s3://no-such-bucket-emprl/runs"])
