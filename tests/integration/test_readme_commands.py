"""The README's "try it" commands, run as written (relative paths and all) from the root of a fresh
checkout: the demo run, the demo sweep and `emprl serve` answering the README's request. The commands are
read out of README.md, so the README cannot drift from what works. A sweep whose every trial fails exits
non-zero with the first trial's error."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from processes import job_env, leftovers

from pipeline.layout import RunLayout

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
MARK = "<!-- readme-test: {} -->"


def readme_block(name: str) -> list[str]:
    """The command lines of the README's shell block marked ``<!-- readme-test: name -->``."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(MARK.format(name)) + 1
    assert lines[start].startswith("```"), f"README: {MARK.format(name)} must sit right above a ``` block"
    end = lines.index("```", start + 1)
    return [line for line in lines[start + 1 : end] if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files of this repository in a new folder, with the test's virtualenv as ``.venv`` (what
    `make run` leaves behind), as a new user's clone."""
    folder = tmp_path_factory.mktemp("clone") / "emprl"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in listed.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    (folder / ".venv").symlink_to(VENV)
    return folder


def bash(script: str, cwd: Path, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def test_readme_try_it_block_runs_as_written(checkout: Path) -> None:
    block = readme_block("try-it")
    serve = [line for line in block if line.startswith("emprl serve")]
    setup = [line for line in block if line.startswith("source ")]
    assert len(serve) == 1 and setup, block
    env, marker = job_env()
    done = bash("\n".join(line for line in block if line not in serve), checkout, env, timeout_s=1500)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    run = RunLayout(checkout / "runs" / "demo")
    sweep = run.sweep()
    trials = pq.read_table(sweep.trials).to_pylist()
    statuses = sorted(t["status"] for t in trials)  # ASHA may stop the weaker trial early
    assert len(statuses) == 2 and "completed" in statuses and "error" not in statuses, trials
    assert sweep.pareto_figure.is_file() and sweep.report_html.is_file()
    assert (sweep.best_policy / "config.json").is_file()
    assert re.search(r"2 trial\(s\), [12] completed, 0 failed; best \S+ dev/emp_f1", done.stdout), done.stdout

    server = subprocess.Popen(
        ["bash", "-c", "\n".join([*setup, "exec " + serve[0]])],
        cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        request = "\n".join(readme_block("try-it-request"))
        deadline = time.monotonic() + 240
        while True:
            answer = bash(request, checkout, env, timeout_s=60)
            if answer.returncode == 0 and answer.stdout.startswith("{"):
                break
            assert server.poll() is None and time.monotonic() < deadline, (answer, server.poll())
            time.sleep(2)
        body = json.loads(answer.stdout)
        assert isinstance(body["response"], str) and body["response"].strip(), body
        assert {"er", "ip", "ex"} <= set(body["levels"]), body
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
        output, _ = server.communicate(timeout=120)
    assert server.returncode == 0, output[-3000:]
    assert leftovers(marker) == []


def test_a_sweep_whose_every_trial_fails_exits_non_zero_with_the_first_error(checkout: Path) -> None:
    run = checkout / "runs" / "demo"
    if not (run / "sft").is_dir():
        pytest.skip("needs the run of test_readme_try_it_block_runs_as_written")
    broken = checkout / "runs" / "broken"
    shutil.copytree(run, broken, ignore=shutil.ignore_patterns("sweep", "ppo", "evaluate"))
    for weights in (broken / "identifiers" / "ER").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    env, marker = job_env()
    setup = [line for line in readme_block("try-it") if line.startswith("source ")]
    tune = "emprl tune --run-dir runs/broken --preset sweep_tiny --space configs/sweeps/tiny.yaml"
    done = bash("\n".join([*setup, tune]), checkout, env, timeout_s=600)
    assert done.returncode == 1, (done.stdout[-2000:], done.stderr[-2000:])
    message = next(
        (line for line in done.stderr.splitlines() if line.startswith("sweep error:")), done.stderr
    )
    assert message.startswith(
        "sweep error: 2 trial(s), 0 completed, 2 failed: no trial completed. First trial's error:"
    )
    error_file = message.split("(full traceback: ", 1)[1].split(")", 1)[0]
    assert Path(error_file).is_file() and Path(error_file).is_relative_to(broken / "sweep")
    assert (broken / "sweep" / "trials.parquet").is_file()
    assert leftovers(marker) == []
