"""Processes of a job started in a test: an environment marker finds every process the job started
(Ray's GCS and raylet, workers, actors), so a test checks none is left and ends only its own."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
RAY = BIN / "ray"


def processes_with(marker: str) -> list[str]:
    """``pid cmdline`` of every live process whose environment holds ``marker`` (the job and every
    process it started: Ray's GCS and raylet, workers, Train controllers, actors)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() not in (proc / "environ").read_bytes():
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = next(
                (line for line in (proc / "status").read_text().splitlines() if line.startswith("State:")), ""
            )
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if "zombie" not in state:
            found.append(f"{proc.name} {cmd[:120]}")
    return found


def leftovers(marker: str, wait_s: float = 30.0) -> list[str]:
    """Processes of the marked job still alive after up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = processes_with(marker)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def job_env() -> tuple[dict[str, str], str]:
    """The environment of a job run in a subprocess (its own Ray temp dir, no cluster address to join)
    and the marker that finds its processes."""
    marker = f"EMPRL_TEST_JOB={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    env["EMPRL_TEST_JOB"] = marker.split("=", 1)[1]
    return env, marker


def kill_all(marker: str) -> None:
    """SIGKILL every process of the marked job (a machine losing the job), by process id."""
    for line in processes_with(marker):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayHead:
    """A Ray head on loopback (``ray start --head --block``) in its own process group, started on creation
    so that it comes up while other work runs; :meth:`ready` waits for its dashboard. Ended by signalling
    that group only (``ray stop`` would end every Ray process of the user)."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
        self.env = {
            **os.environ,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_OFFLINE": "1",
        }
        self.env.pop("RAY_ADDRESS", None)
        dashboard = free_port()
        self.address = f"http://127.0.0.1:{dashboard}"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                str(RAY), "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=2",
                "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}", f"--temp-dir={self.temp}",
                # every listening port explicit: defaults (e.g. the agent's 52365) collide with other local clusters
                *(f"--{name}={free_port()}" for name in (
                    "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                    "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
                )),
            ],
            env=self.env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def ready(self) -> tuple[str, dict[str, str]]:
        """Once the dashboard answers (at most 120 s after the start): its address and the environment to
        talk to the head with."""
        while True:
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2) as r:
                    if r.status == 200:
                        return self.address, self.env
            except OSError:
                if time.monotonic() > self.started + 120 or self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the Ray head at {self.address} did not come up (exit code {self.proc.poll()})"
                    ) from None
                time.sleep(1)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:  # here it did not exit within 20 s of SIGTERM: a short grace, then SIGKILL
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:  # `ray start --block` can leave its GCS and monitor behind after SIGTERM
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


class BackgroundJob:
    """A job command (see :func:`job_env`) started on creation in its own process, its stdout and stderr
    going to files in ``folder``: it runs beside other tests (on two cores a pipeline run leaves one core
    mostly idle), and :meth:`finish` collects it."""

    def __init__(self, command: list[str], folder: Path, *, cwd: Path) -> None:
        self.env, self.marker = job_env()
        self.stdout, self.stderr = folder / "stdout.txt", folder / "stderr.txt"
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen(command, cwd=cwd, env=self.env, stdout=out, stderr=err, text=True)

    def finish(self, timeout_s: float) -> tuple[int, str, str]:
        """Waits for the job: its exit code, stdout and stderr."""
        code = self.proc.wait(timeout=timeout_s)
        return code, self.stdout.read_text(), self.stderr.read_text()

    def stop(self) -> None:
        """Ends the job and every process it started if it still runs."""
        if self.proc.poll() is None:
            kill_all(self.marker)
            self.proc.wait(timeout=60)


def selected_tests(request: pytest.FixtureRequest) -> set[str]:
    """Names of the tests of the requesting module that this session runs (after ``-k``/``-m``)."""
    return {item.name for item in request.session.items if getattr(item, "module", None) is request.module}
