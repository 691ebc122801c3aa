"""`ray job submit` of the PPO job against a head started with `ray start --head` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ppo_inputs import build_run_dir, tiny_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def head() -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head on loopback in its own process group; ended by signalling that group only."""
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    proc = subprocess.Popen(
        [
            str(RAY), "start", "--head", "--block", f"--port={_free_port()}", "--num-cpus=2",
            "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", f"--temp-dir={temp}",
            # every listening port explicit: defaults (e.g. the agent's 52365) collide with other local clusters
            *(f"--{name}={_free_port()}" for name in (
                "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
            )),
        ],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        f"the Ray head at {address} did not come up (exit code {proc.poll()})"
                    ) from None
                time.sleep(1)
        yield address, env
    finally:
        # only this head's process group: `ray stop` would end every Ray process of the user
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:  # `ray start --block` can leave its GCS and monitor behind after SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


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
