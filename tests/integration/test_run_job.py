"""The main job end to end on the demo data, and the README's "try it" commands run as written (relative
paths and all) from the root of a fresh checkout.

The README's `emprl run` (a new user's first command) starts with the module and runs beside its other
tests: on two cores one pipeline run leaves a core mostly idle. The README's commands are read out of
README.md, so the README cannot drift from what works. The same job through `ray job submit` on three
nodes that share no disk is tests/integration/test_cluster_storage.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from processes import BackgroundJob, job_env, kill_all, leftovers, processes_with, selected_tests

from jobs.cli.run import STAGE_NAMES
from pipeline.config import load_config
from pipeline.layout import RunLayout

ROOT = Path(__file__).resolve().parents[2]


def test_local_cluster_stays_on_loopback(ray_cluster: None) -> None:
    import ray

    nodes = ray.nodes()
    assert nodes and all(node["NodeManagerAddress"] == "127.0.0.1" for node in nodes)
    assert ray.util.get_node_ip_address() == "127.0.0.1"


README_TESTS = {
    "test_readme_run_as_a_new_user_would",
    "test_readme_run_writes_every_stage_into_one_folder",
    "test_readme_sweep_and_serve_as_written",
    "test_a_sweep_whose_every_trial_fails_exits_non_zero_with_the_first_error",
}
VENV = Path(sys.executable).parent.parent
MARK = "<!-- readme-test: {} -->"


def readme_block(name: str) -> list[str]:
    """The command lines of the README's shell block marked ``<!-- readme-test: name -->``."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(MARK.format(name)) + 1
    assert lines[start].startswith("```"), f"README: {MARK.format(name)} must sit right above a ``` block"
    end = lines.index("```", start + 1)
    return [line for line in lines[start + 1 : end] if line.strip() and not line.lstrip().startswith("#")]


def readme_lines(prefix: str) -> list[str]:
    """The lines of the README's try-it block that start with ``prefix``."""
    return [line for line in readme_block("try-it") if line.startswith(prefix)]


def in_shell(*lines: str) -> list[str]:
    """A bash command running ``lines`` as a script, stopping at the first that fails."""
    return ["bash", "-e", "-c", "\n".join(lines)]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files of this repository in a new folder, with the test's virtualenv as ``.venv`` (what
    `make run` leaves behind): a new user's clone."""
    folder = tmp_path_factory.mktemp("clone") / "emprl"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in listed.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    (folder / ".venv").symlink_to(VENV)
    return folder


@pytest.fixture(scope="module", autouse=True)
def background(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, checkout: Path
) -> Iterator[dict[str, Any]]:
    """What the module's selected tests need, started with the module: the README's `emprl run` in the
    fresh checkout, as written."""
    selected = selected_tests(request)
    started: dict[str, Any] = {}
    try:
        if selected & README_TESTS:
            (run,) = readme_lines("emprl run ")
            command = in_shell(*readme_lines("source "), run)
            started["cli"] = BackgroundJob(command, tmp_path_factory.mktemp("readme_run"), cwd=checkout)
        yield started
    finally:
        if "cli" in started:
            started["cli"].stop()


@pytest.mark.parametrize(
    ("command", "override"), [("run", "learner.engine.zero_stage=4"), ("sft", "sft.engine.zero_stage=4")]
)
def test_cli_rejects_bad_config_before_any_work(command: str, override: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", f"jobs.cli.{command}", override, f"run.output_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""},
    )  # fmt: skip
    assert proc.returncode != 0
    assert override in proc.stderr and "Fix:" in proc.stderr
    assert not any(tmp_path.iterdir()), "no run folder may be created for an invalid config"


@pytest.mark.slow
def test_interrupted_or_failed_run_leaves_no_process(tmp_path: Path) -> None:
    """Ctrl-C during identifier training (Ray Train workers and controller running), and a stage that
    fails with its cluster up: the job exits and every process it started is gone."""
    env, marker = job_env()
    args = [
        sys.executable,
        "-m",
        "jobs.cli.run",
        f"run.output_dir={tmp_path}",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    job = subprocess.Popen(
        [*args, "run.name=interrupted"], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert job.stdout is not None
    seen = []
    for line in job.stdout:
        seen.append(line)
        if "epoch 1/" in line:  # a Train worker is training
            break
    assert any("epoch 1/" in line for line in seen), "".join(seen)
    train_processes = [p for p in processes_with(marker) if "RayTrainWorker" in p or "TrainController" in p]
    assert train_processes, processes_with(marker)
    job.send_signal(signal.SIGINT)
    try:
        rest, _ = job.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_all(marker)  # nothing of the test outlives it
        raise
    assert job.returncode != 0
    assert "KeyboardInterrupt" in rest, rest[-2000:]
    assert leftovers(marker) == []

    env, marker = job_env()
    failed = subprocess.run(
        [*args, "run.name=failed", f"identifiers.encoder={tmp_path / 'no_such_encoder'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert failed.returncode != 0
    assert "no_such_encoder" in failed.stderr, failed.stderr[-3000:]
    assert "Traceback" in failed.stderr, "the error reaches the terminal in full"
    assert leftovers(marker) == []


@pytest.fixture(scope="module")
def readme_run(background: dict[str, Any], checkout: Path) -> tuple[RunLayout, str, str, str]:
    """The README's `emprl run` (started with the module) finished: its layout, stdout, stderr and the
    marker of its processes."""
    job: BackgroundJob = background["cli"]
    returncode, stdout, stderr = job.finish(timeout_s=900)
    assert returncode == 0, stderr[-3000:]
    (run,) = readme_lines("emprl run ")
    name = re.search(r"run\.name=(\S+)", run)
    assert name, run
    return RunLayout(checkout / "runs" / name.group(1)), stdout, stderr, job.marker


@pytest.mark.slow
def test_readme_run_as_a_new_user_would(readme_run: tuple[RunLayout, str, str, str]) -> None:
    """The README's `emprl run`, as written in a fresh checkout: a short terminal, Ray's and the libraries'
    output in the run's log, the report path last, and no process of the job left behind. (Started with
    the module, it ran beside the tests above.)"""
    layout, stdout, stderr, marker = readme_run
    config = yaml.safe_load(layout.config.read_text())
    assert config["data"]["source"] == "demo"
    terminal = (stdout + stderr).splitlines()
    # every stage starts and reports its headline; the last lines say where the results are
    for index, name in enumerate(STAGE_NAMES, 1):
        assert any(f"stage {index}/{len(STAGE_NAMES)}: {name}" in line for line in terminal), name
        assert any(f"stage {index}/{len(STAGE_NAMES)} {name} done" in line for line in terminal), name
    assert stdout.splitlines()[-1] == f"report (open in a browser): {layout.evaluate.report_html.resolve()}"
    assert any("ETA" in line for line in terminal), "long stages show progress with an ETA"
    # the chatter went to the run's log, not the terminal
    log = layout.log.read_text()
    for chatter in ("Started a local Ray instance", "(RayTrainWorker pid=", "(EvaluationWorker pid="):
        assert chatter in log and not any(chatter in line for line in terminal), chatter
    assert not any("Loading weights" in line or "PlacementGroupCleaner" in line for line in terminal)
    assert len(terminal) < 120, "\n".join(terminal)
    assert leftovers(marker) == []


@pytest.mark.slow
def test_readme_run_writes_every_stage_into_one_folder(readme_run: tuple[RunLayout, str, str, str]) -> None:
    """The README's `emprl run`: every stage's output in the run folder, and the report. (The same command
    through `ray job submit` on three nodes that share no disk, into a bucket, is
    tests/integration/test_cluster_storage.py.)"""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    layout, *_ = readme_run
    run_dir = layout.root
    cfg = load_config(run_dir / "config.yaml")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sorted(STAGE_NAMES) == sorted(k for k in summary if k != "total_seconds")
    assert summary["data"]["ed"]["train"]["examples"] > 0
    assert sum(summary["data"]["epitome_pairs"].values()) > 0
    # the resolved config is in the run folder and reloads to the same config
    assert cfg.data.source == "demo" and cfg.run.name == run_dir.name
    stats = json.loads((run_dir / "data" / "stats.json").read_text())
    assert stats["bad_rows"] == 0
    # identifiers trained and exported, every gold response labelled
    for mechanism in ("ER", "IP", "EX"):
        assert (run_dir / "identifiers" / mechanism / "metrics.json").is_file()
        assert set(summary["identifiers"][mechanism]) == {"test_accuracy", "test_macro_f1"}
    labeled = pq.read_table(run_dir / "labeled" / "train.parquet")
    assert (
        labeled.num_rows == summary["data"]["ed"]["train"]["examples"] == summary["label"]["splits"]["train"]
    )
    assert {"er_level", "ip_level", "ex_level"} <= set(labeled.column_names)
    # the initial policy is a plain Hugging Face folder
    policy_dir = run_dir / "init" / "policy"
    model = AutoModelForSeq2SeqLM.from_pretrained(policy_dir)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    assert model.config.d_model == cfg.model.d_model
    assert len(tokenizer) == summary["init"]["policy_vocab"]
    # PPO ran its iterations on the cluster's roles
    ppo = json.loads((run_dir / "ppo" / "metrics.json").read_text())
    assert ppo["iterations"] == cfg.ppo.total_steps and ppo["version"] == cfg.ppo.total_steps
    # the run ends with SFT and PPO side by side on valid; SFT's gold perplexity is its validation perplexity
    evaluation = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert evaluation["policy_order"] == ["sft", "ppo"] and len(evaluation["comparisons"]) == 1
    assert (
        evaluation["n_examples"] == summary["label"]["splits"]["valid"] == summary["evaluate"]["n_examples"]
    )
    assert Path(summary["evaluate"]["report"]) == run_dir / "evaluate" / "report.html"
    assert (run_dir / "evaluate" / "report.html").is_file()
    sft_val_ppl = json.loads((run_dir / "sft" / "metrics.json").read_text())["best"]["val_ppl"]
    assert evaluation["policies"]["sft"]["perplexity"] == pytest.approx(sft_val_ppl, rel=1e-4)


@pytest.mark.slow
def test_readme_sweep_and_serve_as_written(
    readme_run: tuple[RunLayout, str, str, str], checkout: Path
) -> None:
    """The rest of the README's try-it block on that run folder: the demo sweep completes with a Pareto
    figure and a best policy, and `emprl serve` answers the README's request, then stops on Ctrl-C."""
    setup = readme_lines("source ")
    (tune,) = readme_lines("emprl tune ")
    (serve,) = readme_lines("emprl serve ")
    env, marker = job_env()
    done = subprocess.run(
        in_shell(*setup, tune), cwd=checkout, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    sweep = readme_run[0].sweep()
    trials = pq.read_table(sweep.trials).to_pylist()
    statuses = sorted(t["status"] for t in trials)  # ASHA may stop the weaker trial early, never the control
    assert len(statuses) == 3 and "completed" in statuses and "error" not in statuses, trials
    assert [t["status"] for t in trials if t["control"]] == ["completed"], trials
    assert sweep.pareto_figure.is_file() and sweep.report_html.is_file()
    assert (sweep.best_policy / "config.json").is_file() and (sweep.confirm / "metrics.json").is_file()
    assert re.search(
        r"3 trial\(s\), [123] completed, 0 failed; best \S+ dev/emp_f1 .*; confirmed on \d+ held-out examples",
        done.stdout,
    ), done.stdout

    request = in_shell(*readme_block("try-it-request"))
    port = re.search(r"127\.0\.0\.1:(\d+)", request[-1])
    assert port, request
    with socket.socket() as probe:  # a server already there would answer the request in place of ours
        taken = probe.connect_ex(("127.0.0.1", int(port.group(1)))) == 0
    assert not taken, f"127.0.0.1:{port.group(1)} (the README's port) is taken by a process of another run"
    server = subprocess.Popen(
        in_shell(*setup, "exec " + serve), cwd=checkout, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            answer = subprocess.run(
                request, cwd=checkout, env=env, capture_output=True, text=True, timeout=60
            )
            if answer.returncode == 0 and answer.stdout.startswith("{"):
                break
            assert server.poll() is None and time.monotonic() < deadline, (answer, server.poll())
            time.sleep(2)
        body = json.loads(answer.stdout)
        assert isinstance(body["response"], str) and body["response"].strip(), body
        assert {"er", "ip", "ex"} <= set(body["levels"]), body
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
        try:
            output, _ = server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            kill_all(marker)  # a server that ignored Ctrl-C must not outlive the test (nor hold the port)
            raise
    assert server.returncode == 0, output[-3000:]
    assert leftovers(marker) == []


@pytest.mark.slow
def test_a_sweep_whose_every_trial_fails_exits_non_zero_with_the_first_error(
    readme_run: tuple[RunLayout, str, str, str], checkout: Path
) -> None:
    """The README's sweep command on a copy of the run whose ER identifier is corrupt: every trial fails,
    `emprl tune` exits 1 naming the first trial's error and its file, the tables are still written. (With a
    given dev slice: the pilot that sizes one would meet the corrupt identifier first, before any trial.)"""
    run = readme_run[0].root
    broken = checkout / "runs" / "broken"
    shutil.copytree(run, broken, ignore=shutil.ignore_patterns("sweep", "ppo", "evaluate"))
    for weights in (broken / "identifiers" / "ER").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    (tune,) = readme_lines("emprl tune ")
    env, marker = job_env()
    command = in_shell(
        *readme_lines("source "),
        tune.replace(f"--run-dir runs/{run.name}", "--run-dir runs/broken") + " --dev-examples 32",
    )
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, (done.stdout[-2000:], done.stderr[-2000:])
    message = next(
        (line for line in done.stderr.splitlines() if line.startswith("sweep error:")), done.stderr
    )
    assert message.startswith(
        "sweep error: 3 trial(s), 0 completed, 3 failed: no trial completed. First trial's error:"
    ), message
    error_file = Path(message.split("(full traceback: ", 1)[1].split(")", 1)[0])
    assert error_file.is_file() and error_file.is_relative_to(broken / "sweep")
    assert (broken / "sweep" / "trials.parquet").is_file()
    assert leftovers(marker) == []
