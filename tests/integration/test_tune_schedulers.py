"""Schedulers of `emprl tune` with tiny models: a PBT exploit restores the better trial's PPO checkpoint
into the worse one and PPO goes on under the *mutated* KL settings; ASHA stops a weak trial early."""

from __future__ import annotations

import itertools
import json
import sys

import pyarrow.parquet as pq
import pytest
import ray
from ppo_inputs import tiny_config

from actors.ppo.controller import PPOController
from jobs.stages.tune import SweepSettings, tune_stage
from pipeline.config.search_space import parse_search_space
from pipeline.layout import RunLayout

pytestmark = pytest.mark.integration

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the trials cannot import this module


PBT_SPACE = {"ppo.kl_coef": {"uniform": [0.02, 0.5]}, "ppo.kl_target": {"uniform": [1.0, 8.0]}}


def _in_force(controller: PPOController, iteration: int, phase: str) -> None:
    """Runs in the trial: at each iteration's start, the trial's config and the KL controller it runs."""
    if phase != "generate":
        return
    trial = controller.out.path.parent
    with (trial.parent / f"{trial.name}.kl.jsonl").open("a") as f:  # outside the trial folder
        kl = controller.kl
        f.write(json.dumps({
            "iteration": iteration, "kl_coef": controller.cfg.ppo.kl_coef, "kl_target": controller.cfg.ppo.kl_target,
            "beta": kl.value, "target": getattr(kl, "target", None),
        }) + "\n")  # fmt: skip


def test_a_pbt_exploit_resumes_the_worse_trial_under_mutated_kl_settings(
    ray_cluster: None, sweep_layout: RunLayout
) -> None:
    settings = SweepSettings(
        num_samples=2, scheduler="pbt", max_concurrent_trials=2, perturbation_interval=1,
        quantile_fraction=0.5, resample_probability=1.0, dev_examples=8, eval_examples=8, control=False,
    )  # fmt: skip
    layout = sweep_layout
    cfg = tiny_config(ppo__total_steps=3, ppo__save_every=1, ppo__kl_mode="adaptive")
    space = parse_search_space(PBT_SPACE, cfg)
    result = tune_stage(cfg, layout, space, settings, hooks=[_in_force])
    sweep = layout.sweep()
    rows = {r["trial_id"]: r for r in pq.read_table(sweep.trials).to_pylist()}
    assert result.metrics["completed"] == 2, rows
    exploits = 0
    for trial_id, row in rows.items():
        seen = [json.loads(x) for x in sweep.trial(trial_id).path.parent.joinpath(f"{trial_id}.kl.jsonl").read_text().splitlines()]  # fmt: skip
        for before, after in itertools.pairwise(seen):
            if (after["kl_coef"], after["kl_target"]) == (before["kl_coef"], before["kl_target"]):
                continue
            exploits += 1
            # PPO went on from the donor's checkpoint (same iteration count), not from scratch ...
            assert after["iteration"] == before["iteration"] + 1, seen
            # ... under the mutated values: a new kl_coef restarts beta there, the new target is the controller's
            assert (
                after["beta"] == pytest.approx(after["kl_coef"]) and after["target"] == after["kl_target"]
            ), seen
            assert 0.02 <= after["kl_coef"] <= 0.5 and 1.0 <= after["kl_target"] <= 8.0, seen
        # the table shows the config the trial ended with; its iterations all ran, each once
        assert (row["ppo.kl_coef"], row["ppo.kl_target"]) == (seen[-1]["kl_coef"], seen[-1]["kl_target"])
        logged = [
            json.loads(x)
            for x in sweep.trial(trial_id).ppo.joinpath("metrics.jsonl").read_text().splitlines()
        ]
        assert [m["iteration"] for m in logged] == [1, 2, 3], logged
        assert logged[-1]["rollout/kl_coef"] == pytest.approx(seen[-1]["beta"], rel=1e-3), (logged, seen)
    assert exploits >= 1, "with two trials and quantile 0.5 the worse one exploits the better at every report"
    # the table counts the exploits apart from the failures (none here) and from synchronous PBT's pauses
    assert sum(r["exploits"] for r in rows.values()) == exploits, rows
    assert all(r["failures"] == 0 and r["starts"] >= 1 + r["exploits"] for r in rows.values()), rows


def test_asha_stops_the_weaker_trial_after_its_first_report(
    ray_cluster: None, sweep_layout: RunLayout
) -> None:
    layout = sweep_layout
    cfg = tiny_config(ppo__total_steps=3, ppo__kl_mode="fixed")
    # ranked on the (fixed) KL coefficient itself: the 0.3 trial is worse than the 0.05 one at every report
    space = parse_search_space({"ppo.kl_coef": {"grid": [0.05, 0.3]}}, cfg)
    settings = SweepSettings(
        metric="rollout/kl_coef", mode="min", constraints=("rollout/kl_coef<=0.1",), max_concurrent_trials=1,
        dev_examples=8, eval_examples=8, control=False, grace_period=1, reduction_factor=2,
    )  # fmt: skip
    result = tune_stage(cfg, layout, space, settings)
    rows = {r["ppo.kl_coef"]: r for r in pq.read_table(layout.sweep().trials).to_pylist()}
    assert rows[0.05]["status"] == "completed" and rows[0.05]["iteration"] == 3, rows
    assert rows[0.3]["status"] == "stopped" and rows[0.3]["reports"] == 1 and rows[0.3]["iteration"] == 1, (
        rows
    )
    assert rows[0.05]["feasible"] and not rows[0.3]["feasible"]
    assert result.metrics["best"]["trial_id"] == rows[0.05]["trial_id"]
    assert "rollout/kl_coef <= 0.1" in layout.sweep().report_md.read_text()
