"""`ray job submit` of the PPO job against a head started with `ray start --head` on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ppo_inputs import build_run_dir, tiny_overrides
from processes import RAY, ray_head

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def head() -> Iterator[tuple[str, dict[str, str]]]:
    with ray_head() as started:
        yield started


def test_ppo_job_runs_through_ray_job_submit(head: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = head
    run_dir = build_run_dir(tmp_path / "run", tmp_path / "cache")
    command = [
        str(RAY), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
        sys.executable, "-m", "jobs.ppo", "--run-dir", str(run_dir), "resources.address=auto",
        *tiny_overrides(rollout__num_workers=2, ppo__total_steps=2),
    ]  # fmt: skip
    for _ in range(15):  # the head's job agent starts a few seconds after the dashboard answers
        submit = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        output = submit.stdout + submit.stderr
        if "No available agent" not in output:
            break
        time.sleep(2)
    assert submit.returncode == 0, output[-4000:]
    assert "succeeded" in output
    metrics = json.loads((run_dir / "ppo" / "metrics.json").read_text())
    assert metrics["iterations"] == 2 and metrics["samples"] == 16 and metrics["version"] == 2
    assert (run_dir / "ppo" / "policy" / "model.safetensors").is_file()
