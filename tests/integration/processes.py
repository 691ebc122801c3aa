"""Processes of a job started in a test: an environment marker finds every process the job started
(Ray's GCS and raylet, workers, actors), so a test checks none is left and ends only its own."""

from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid
from pathlib import Path


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
