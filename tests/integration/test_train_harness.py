"""Nothing outlives its job: after a Train stage returns, fails or is interrupted, no controller or
Train worker process of it remains, and no placement-group cleaner polls a missing State API."""

from __future__ import annotations

import _thread
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
import ray.train

from actors.training import harness
from pipeline.config import ResourcesConfig

RES = ResourcesConfig(num_cpus=2, trainer_cpus=1.0, torch_threads=1)
TITLES = ("ray::TrainController", "ray::RayTrainWorker", "ray::PlacementGroupCleaner")

# the loops below live in this test module, which Train workers cannot import: ship them by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _loop(config: dict[str, Any]) -> None:
    Path(config["started"]).write_text("started\n")
    if config["mode"] == "fail":
        raise RuntimeError("injected failure")
    if config["mode"] == "hang":
        time.sleep(300)
    ray.train.report({"ok": 1})


def _train_processes(since: float) -> list[str]:
    """Controller, Train worker and cleaner processes of this session's cluster started since ``since``
    (children of the Ray processes this test process started; exited-but-unreaped ones excluded)."""
    ray_pids = {child.pid for child in psutil.Process().children()}
    found = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "create_time", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if (
            proc.info["ppid"] in ray_pids
            and proc.info["create_time"] >= since - 1
            and proc.info["status"] != psutil.STATUS_ZOMBIE
            and cmd.startswith(TITLES)
        ):
            found.append(f"{proc.info['pid']} {cmd}")
    return found


def _assert_all_gone(since: float) -> None:
    controllers = [p for p in _train_processes(since) if "TrainController" in p]
    assert controllers == [], "the harness waits until the controller process has exited"
    deadline = time.monotonic() + 20  # Train workers are killed by Ray (ray.kill is asynchronous)
    while _train_processes(since) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _train_processes(since) == []


def _fit(tmp_path: Path, mode: str, name: str = "run") -> ray.train.Result:
    return harness.fit(
        f"test stage ({name})",
        _loop,
        {"mode": mode, "started": str(tmp_path / f"{name}.started")},
        storage=tmp_path / "storage",
        name=name,
        resume_from=None,
        num_workers=1,
        res=RES,
        max_failures=0,
        keep_checkpoints=1,
    )


def _when_started(marker: Path, action: Any) -> threading.Thread:
    def wait_then_act() -> None:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def test_nothing_remains_after_a_stage_returns(ray_cluster: None, tmp_path: Path) -> None:
    since = time.time()
    result = _fit(tmp_path, "ok")
    assert result.error is None and (tmp_path / "run.started").exists()
    _assert_all_gone(since)


def test_nothing_remains_after_a_stage_fails(ray_cluster: None, tmp_path: Path) -> None:
    since = time.time()
    with pytest.raises(harness.TrainStageError, match=r"test stage \(run\) failed after 0 worker restart"):
        _fit(tmp_path, "fail")
    _assert_all_gone(since)


def test_nothing_remains_after_the_driver_is_interrupted(ray_cluster: None, tmp_path: Path) -> None:
    since = time.time()
    _when_started(tmp_path / "run.started", _thread.interrupt_main)  # as Ctrl-C would
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, "hang")
    assert time.monotonic() - t0 < 120, "the hanging run was aborted, not waited for"
    _assert_all_gone(since)


def test_one_failing_call_of_a_concurrent_stage_ends_the_others(ray_cluster: None, tmp_path: Path) -> None:
    since = time.time()
    started = threading.Event()
    _when_started(tmp_path / "long.started", started.set)

    def fail_once_the_other_runs() -> None:
        assert started.wait(120)
        raise ValueError("another mechanism failed")

    t0 = time.monotonic()
    with pytest.raises(ValueError, match="another mechanism failed"):
        harness.fit_concurrently(
            {"long": lambda: _fit(tmp_path, "hang", "long"), "bad": fail_once_the_other_runs}, 2
        )
    assert time.monotonic() - t0 < 120, "the hanging run was aborted, not waited for"
    _assert_all_gone(since)


def test_no_placement_group_cleaner_without_the_state_api(ray_cluster: None, tmp_path: Path) -> None:
    # the test cluster runs no dashboard: Ray's cleaner could only warn every second
    trainer = harness.OwnedTorchTrainer(lambda: None)
    names = {type(c).__name__ for c in trainer._create_default_callbacks()}
    assert "PlacementGroupCleanerCallback" not in names and "BackendSetupCallback" in names
