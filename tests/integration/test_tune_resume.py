"""`emprl tune --resume` after the sweep's driver (and its local cluster) died mid-sweep: the finished
trial is not run again, the unfinished one goes on from its last checkpoint, with the Optuna search
(two objectives) restored; run as a user would, with `python -m jobs.cli.tune`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ppo_inputs import linked_run, tiny_overrides
from processes import job_env, leftovers
from tune_state import kill_mid_sweep

from pipeline.layout import SweepDir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8


def _reports(sweep: SweepDir) -> dict[str, list[dict[str, float]]]:
    """Every trial's Tune results so far (``result.json`` lines), by trial id."""
    out = {}
    for path in sweep.experiment.glob("*/result.json"):
        out[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def _ppo_iterations(sweep: SweepDir, trial_id: str) -> list[int]:
    path = sweep.trial(trial_id).ppo / "metrics.jsonl"
    return [json.loads(line)["iteration"] for line in path.read_text().splitlines()] if path.exists() else []


def test_a_killed_sweep_resumes_without_rerunning_finished_trials(sweep_run: Path, tmp_path: Path) -> None:
    layout = linked_run(sweep_run, tmp_path)
    sweep = layout.sweep()
    space = tmp_path / "space.yaml"
    space.write_text("ppo.kl_coef: {uniform: [0.05, 0.5]}\n")
    command = [
        sys.executable, "-m", "jobs.cli.tune", "--run-dir", str(layout.root), "--space", str(space),
        "--search", "optuna", "--objective", "rollout/kl:min", "--scheduler", "fifo", "--num-samples", "2",
        "--dev-examples", "8", "--eval-examples", "8", "--no-control", "--max-concurrent", "1",
        *tiny_overrides(ppo__total_steps=STEPS, ppo__save_every=1, ppo__kl_mode="fixed"),
    ]  # fmt: skip
    # one trial finished, the other mid-run with a checkpoint: then the driver and its local cluster die
    finished, unfinished = kill_mid_sweep(command, sweep, tmp_path / "first.out", 480, below=STEPS)
    before = _reports(sweep)
    finished_log = (sweep.trial(finished).ppo / "metrics.jsonl").read_text()
    assert _ppo_iterations(sweep, finished) == list(range(1, STEPS + 1))
    cut = _ppo_iterations(sweep, unfinished)
    assert cut and len(cut) < STEPS, cut

    # options that contradict the saved sweep are refused before anything starts
    env, marker = job_env()
    clash = subprocess.run(
        [sys.executable, "-m", "jobs.cli.tune", "--run-dir", str(layout.root), "--resume", "--num-samples", "5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert clash.returncode != 0 and "num_samples=5 (the sweep has 2)" in clash.stderr, clash.stderr[-2000:]

    resumed = subprocess.run(
        [sys.executable, "-m", "jobs.cli.tune", "--run-dir", str(layout.root), "--resume"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=480,
    )  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert leftovers(marker) == []
    rows = {r["trial_id"]: r for r in pq.read_table(sweep.trials).to_pylist()}
    assert set(rows) == {finished, unfinished}, rows
    assert all(r["status"] == "completed" for r in rows.values()), rows
    # the table counts every trial once and marks the one that started again
    assert (rows[finished]["starts"], rows[unfinished]["starts"]) == (1, 2), rows
    assert rows[finished]["failures"] == rows[unfinished]["failures"] == 0, rows  # a resume is no failure
    after = _reports(sweep)
    # the finished trial was not run again: no new Tune result, its PPO log untouched
    assert after[finished] == before[finished]
    assert (sweep.trial(finished).ppo / "metrics.jsonl").read_text() == finished_log
    # the unfinished one went on from a checkpoint, not from scratch: its first report is not repeated
    # (a report made after the last saved experiment state may be), and PPO logs every iteration once
    reported = [r["iteration"] for r in after[unfinished]]
    assert reported.count(1) == 1 and set(reported) == set(range(1, STEPS + 1)), reported
    assert after[unfinished][-1].get("final") == 1.0
    assert _ppo_iterations(sweep, unfinished) == list(range(1, STEPS + 1))
    assert "trial restored from its Tune checkpoint: PPO iteration" in layout.log.read_text()
    assert "**Best trial:**" in sweep.report_md.read_text()
