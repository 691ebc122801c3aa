"""`emprl tune` with its run folder in a bucket (moto S3 on loopback): Tune keeps the experiment state and
the trials' results and checkpoints in the bucket, the driver publishes the sweep's files (settings, space,
config, tables, report, best policy with its marker), and a sweep killed mid-way resumes from the bucket
alone on a "fresh node" (another scratch root, the first node's mirror deleted, a new local cluster):
the finished trial is not run again and the unfinished one goes on from its Tune checkpoint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from ppo_inputs import publish_run, tiny_overrides
from processes import job_env, leftovers
from s3 import S3Server
from tune_state import kill_mid_sweep

from jobs.stages.tune.results import failed_trials, no_best_message
from pipeline import storage
from pipeline.layout import RunLayout, SweepDir
from pipeline.models import load_policy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


def _reports(sweep: SweepDir, trial_id: str) -> list[dict[str, float]]:
    """A trial's Tune results (``result.json`` lines) as the bucket holds them."""
    text = storage.read_text(sweep.experiment / trial_id / "result.json") or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_sweep_in_a_bucket_resumes_on_a_fresh_node_from_the_bucket_alone(
    sweep_run: Path,
    s3_bucket: str,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = s3_bucket.removeprefix("s3://")
    uri = f"{s3_bucket}/run"
    layout = publish_run(sweep_run, uri, ("train", "valid"))
    sweep = layout.sweep()
    space = tmp_path / "space.yaml"
    space.write_text("ppo.kl_coef: {uniform: [0.05, 0.5]}\n")
    command = [
        sys.executable, "-m", "jobs.cli.tune", "--run-dir", uri, "--space", str(space),
        "--scheduler", "fifo", "--num-samples", "2", "--dev-examples", "8", "--eval-examples", "8", "--no-control", "--max-concurrent", "1",
        *tiny_overrides(ppo__total_steps=STEPS, ppo__save_every=1, ppo__kl_mode="fixed"),
    ]  # fmt: skip
    # one trial finished, the other mid-run with a checkpoint: then the driver and its local cluster die
    finished, unfinished = kill_mid_sweep(command, sweep, tmp_path / "first.out", 240, below=STEPS)
    keys = set(s3_server.listing(bucket, "run/sweep/"))
    for name in ("settings.json", "space.yaml", "config.yaml", "tune/ppo/tuner.pkl"):
        assert f"run/sweep/{name}" in keys, sorted(keys)
    tune_prefix = "run/sweep/tune/ppo/"
    assert any(k.startswith(f"{tune_prefix}experiment_state-") for k in keys), sorted(keys)
    assert f"{tune_prefix}{finished}/result.json" in keys, sorted(keys)
    # the unfinished trial's Tune checkpoint (a PPO checkpoint) is in the bucket
    assert any(
        k.startswith(f"{tune_prefix}{unfinished}/checkpoint_") and k.endswith("/controller.json")
        for k in keys
    ), sorted(keys)
    assert not sweep.tune.exists(), "Tune must keep its state in the bucket, not in the node's mirror"
    before = _reports(sweep, finished)

    # a fresh node: another scratch root, and the first node's mirror gone
    shutil.rmtree(storage.scratch_root())
    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path / "node2"))
    layout = RunLayout(storage.local_path(uri))
    sweep = layout.sweep()
    env, marker = job_env()
    resumed = subprocess.run(
        [sys.executable, "-m", "jobs.cli.tune", "--run-dir", uri, "--resume"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert leftovers(marker) == []

    # read back from the bucket alone, on a third node
    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path / "node3"))
    layout = RunLayout(storage.local_path(uri))
    sweep = layout.sweep()
    keys = set(s3_server.listing(bucket, "run/sweep/"))
    for name in ("trials.parquet", "history.parquet", "report.md", "report.html", "best/config.yaml",
                 "best/policy/.emprl-complete.json", "best/policy/value_head.safetensors"):  # fmt: skip
        assert f"run/sweep/{name}" in keys, sorted(keys)
    rows = {r["trial_id"]: r for r in pq.read_table(storage.fetch(sweep.trials)).to_pylist()}
    assert set(rows) == {finished, unfinished}, rows
    errors = {t: storage.read_text(sweep.experiment / t / "error.txt") for t, r in rows.items() if r["error"]}
    assert all(r["status"] == "completed" and r["iteration"] == STEPS for r in rows.values()), errors or rows
    load_policy(sweep.best_policy)  # fetched: complete, with its marker
    assert "**Best trial:**" in (storage.read_text(sweep.report_md) or "")
    assert f"--out {uri}/sweep/best/ppo" in (storage.read_text(sweep.report_md) or "")
    # the finished trial was not run again; the unfinished one went on from its checkpoint (its first
    # report is not repeated; one made after the last saved state may be) to its final report
    assert _reports(sweep, finished) == before
    after = _reports(sweep, unfinished)
    reported = [int(r["iteration"]) for r in after]
    restored = re.findall(
        r"trial restored from its Tune checkpoint: PPO iteration (\d+)", storage.read_text(layout.log) or ""
    )
    assert len(restored) == 1 and 1 <= int(restored[0]) < STEPS, restored
    # every iteration after the checkpoint is reported; none up to it ran again (each shows at most once).
    # Reports up to it may be missing: Tune's driver writes a trial's results and syncs them to the bucket
    # a few seconds after the trial's checkpoint is there, and it was killed in between
    start = int(restored[0])
    assert set(reported) >= set(range(start + 1, STEPS + 1)), (start, reported)
    assert all(reported.count(i) <= 1 for i in range(1, start + 1)), (start, reported)
    assert after[-1].get("final") == 1.0


def test_a_failed_trials_error_file_is_read_from_the_bucket(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune keeps a failed trial's ``error.txt`` in the bucket: the driver reads it from there (on a node
    that never had it) and names it by its URI."""
    sweep = RunLayout(storage.local_path(f"{s3_bucket}/run")).sweep()
    error = sweep.experiment / "abc12_00000" / "error.txt"
    storage.write_text(error, "Traceback (most recent call last):\n  ...\nValueError: ppo.lr too high\n")
    monkeypatch.setenv("EMPRL_SCRATCH", str(tmp_path / "node2"))
    sweep = RunLayout(storage.local_path(f"{s3_bucket}/run")).sweep()
    tune_path, _ = storage.ray_storage(sweep.experiment / "abc12_00000")  # Result.path: the bucket path
    results = [SimpleNamespace(error=RuntimeError("trial failed"), path=tune_path)]
    ((error_file, cause),) = failed_trials(results, sweep)
    assert cause == "ValueError: ppo.lr too high"
    assert storage.display(error_file) == f"{s3_bucket}/run/sweep/tune/ppo/abc12_00000/error.txt"
    message = no_best_message("1 trial(s), 0 completed, 1 failed", [(error_file, cause)], [], sweep)
    assert f"(full traceback: {s3_bucket}/run/sweep/tune/ppo/abc12_00000/error.txt)" in message, message
    assert f"Tables and report: {s3_bucket}/run/sweep" in message, message
