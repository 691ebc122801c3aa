"""What a sweep's newest saved Tune experiment state (what a restore reads) says of each trial, read
through ``pipeline.storage`` so that the same helper reads a local sweep folder or one in a bucket."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from nodes import ROOT
from processes import job_env, kill_all, leftovers
from ray.tune.trainable.metadata import _TrainingRunMetadata

from pipeline import storage
from pipeline.layout import SweepDir


def saved_trials(sweep: SweepDir) -> dict[str, tuple[str, int]]:
    """``{trial id: (status, PPO iteration of its last checkpoint Tune recorded (0: none))}`` from the
    newest ``experiment_state-*`` file; empty when there is none yet or it is being written. Tune records
    a reported checkpoint a step after the result that carried it (a separate ``save`` call of the trial's
    actor): a saved state can hold the result but not yet its checkpoint, and a restore from it would
    start that trial from an older checkpoint."""
    states = [n for n in storage.list_names(sweep.experiment) if n.startswith("experiment_state-")]
    text = storage.read_text(sweep.experiment / max(states)) if states else None
    try:
        data = json.loads(text or "")
    except json.JSONDecodeError:
        return {}
    out = {}
    for trial_json, meta_json in data["trial_data"]:
        trial, meta = json.loads(trial_json), _TrainingRunMetadata.from_json_state(meta_json)
        manager = meta.checkpoint_manager
        saved = manager.latest_checkpoint_result if manager is not None else None
        out[trial["trial_id"]] = (trial["status"], int(saved.metrics.get("iteration", 0)) if saved else 0)
    return out


def kill_mid_sweep(
    command: list[str], sweep: SweepDir, out: Path, timeout_s: float, *, below: int
) -> tuple[str, str]:
    """Start the sweep ``command`` (its output to ``out``); once the saved state has one trial finished and
    the other running with a recorded checkpoint (its iteration in ``1..below-1``), kill the driver and the
    local cluster it started (as if the machine went down). Returns ``(finished trial, unfinished trial)``;
    fails with the driver's output if it exits first."""
    env, marker = job_env()
    with out.open("w") as log:
        driver = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            saved = saved_trials(sweep)
            done = [t for t, (status, _) in saved.items() if status == "TERMINATED"]
            going = [t for t, (status, kept) in saved.items() if status == "RUNNING" and 1 <= kept < below]
            if done and going:
                (finished,), (unfinished,) = done, going
                return finished, unfinished
            assert driver.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, saved
            time.sleep(0.2)
    finally:
        kill_all(marker)
        driver.wait(timeout=60)
        assert leftovers(marker) == []
