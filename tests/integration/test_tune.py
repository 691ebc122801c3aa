"""`emprl tune`: a Ray Tune sweep over PPO with tiny models. Trials complete (one after a crash,
resuming PPO from its Tune checkpoint), each trial's roles sit in its own placement group, the
results table, report and best policy are written, and a bad space fails before any trial."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from ppo_inputs import tiny_config, tiny_overrides

from actors.cluster.group import LocalGroup
from actors.ppo.controller import PPOController
from jobs.cli.tune import main as tune_main
from jobs.stages.tune import SweepError, SweepSettings, tune_stage
from pipeline.config.search_space import parse_search_space
from pipeline.layout import RunLayout
from pipeline.models import load_policy

pytestmark = pytest.mark.integration

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the trials cannot import this module


SPACE = {"ppo.kl_coef": {"grid": [0.05, 0.3]}, "reward.weights.ex": {"uniform": [0.5, 2.0]}}


def _record(controller: PPOController, iteration: int, phase: str) -> None:
    """Runs in the trial: notes every phase, each role's placement group (and, of in-process roles, the
    process: the trial's) and the trial's own, and
    crashes the trial with kl_coef 0.3 once, after its first (checkpointed, reported) iteration."""
    trial = controller.out.path.parent
    events = trial.parent / f"{trial.name}.events.jsonl"  # outside the trial folder: survives the restart
    with events.open("a") as f:
        f.write(json.dumps([iteration, phase]) + "\n")
    with (trial.parent / f"{trial.name}.times.jsonl").open("a") as f:  # when, in which reservation
        f.write(json.dumps([time.time(), ray.get_runtime_context().get_placement_group_id()]) + "\n")
    if (iteration, phase) == (1, "update"):
        groups = controller.groups()
        # an in-process role (resources.in_process_roles, the preset's) answers here, an actor remotely
        seen = {
            role: [
                a.placement() if isinstance(g, LocalGroup) else ray.get(a.placement.remote())
                for a in g.actors
            ]
            for role, g in groups.items()
        }
        seen["trial"] = [
            {"placement_group": ray.get_runtime_context().get_placement_group_id(), "pid": os.getpid()}
        ]
        (trial.parent / f"{trial.name}.placements.json").write_text(json.dumps(seen))
    crashed = trial.parent / f"{trial.name}.crashed"
    if controller.cfg.ppo.kl_coef == 0.3 and (iteration, phase) == (2, "generate") and not crashed.exists():
        crashed.write_text("1")
        raise RuntimeError("injected trial crash")


def test_two_trials_complete_and_the_best_policy_is_published(
    ray_cluster: None, sweep_layout: RunLayout
) -> None:
    layout = sweep_layout
    cfg = tiny_config(ppo__total_steps=2, ppo__save_every=1, ppo__kl_mode="fixed")
    space = parse_search_space(SPACE, cfg)
    settings = SweepSettings(
        max_concurrent_trials=2, grace_period=2, dev_examples=8, eval_examples=8, confirm_resamples=200
    )
    result = tune_stage(cfg, layout, space, settings, hooks=[_record])  # grace 2: both trials run to the end
    sweep = layout.sweep()
    rows = pq.read_table(sweep.trials).to_pylist()
    assert len(rows) == 3 and result.metrics["completed"] == 3, rows
    # the control (the base config's values: kl_coef 0.2, weight 1.0) besides the two samples of the grid
    (control,) = [r for r in rows if r["control"]]
    assert (control["ppo.kl_coef"], control["reward.weights.ex"]) == (0.2, 1.0), control
    assert result.metrics["control"]["trial_id"] == control["trial_id"]
    assert sorted(r["ppo.kl_coef"] for r in rows if not r["control"]) == [0.05, 0.3]
    for r in rows:
        assert r["vs_control/emp_f1"] == pytest.approx(r["eval/emp_f1"] - control["eval/emp_f1"]), r
        assert r["status"] == "completed" and r["iteration"] == 2 and r["reports"] == 2, r
        assert 0.5 <= r["reward.weights.ex"] <= 2.0 or r["control"]
        for key in ("eval/emp_f1", "eval/emp_f1_se", "eval/er_f1", "eval/ip_f1", "eval/ex_f1", "eval/perplexity",
                    "eval/dist2", "dev/emp_f1", "dev/emp_f1_se", "rollout/kl", "rollout/kl_k3", "wall_s"):  # fmt: skip
            assert r[key] == r[key], (key, r)  # not NaN
        # the final Emp-F1's standard error over the 8 evaluated examples, from the trial's own responses
        responses = pq.read_table(sweep.trial(r["trial_id"]).evaluate / "responses.parquet")
        assert responses.num_rows == 8 and r["eval/emp_f1_se"] >= 0, r

    # the search's best by the objective; then the confirmation on the 16 held-out rows of the 32 (the
    # search used the other 16 only) picks best/ by its rule: a trial that passes it, else the control
    assert result.metrics["search_best"]["dev/emp_f1"] == max(r["dev/emp_f1"] for r in rows)
    confirmation = result.metrics["confirmation"]
    assert confirmation["n_examples"] == 16 and confirmation["control_id"] == control["trial_id"]
    confirmed = {c["trial_id"]: c for c in confirmation["rows"]}
    assert set(confirmed) == {r["trial_id"] for r in rows if not r["control"]}  # both fit the top 3
    metrics = json.loads(sweep.confirm.joinpath("metrics.json").read_text())
    assert metrics["n_examples"] == 16 and metrics["policy_order"][0] == control["trial_id"]
    for trial_id, c in confirmed.items():
        (comparison,) = [m for m in metrics["comparisons"] if m["policy"] == trial_id]
        assert c["confirm/emp_f1"] == comparison["metrics"]["emp_f1"]["difference"]
        gain_ok = comparison["metrics"]["emp_f1"]["ci_low"] > 0
        assert c["confirm/passes"] == (gain_ok and c["confirm/perplexity_pct"] <= 5.0), c
    passing = [c for c in confirmed.values() if c["confirm/passes"]]
    best = result.metrics["best"]
    if passing:
        assert best["trial_id"] == max(passing, key=lambda c: c["confirm/emp_f1"])["trial_id"]
    else:  # nothing passed: best/ is the control
        assert (
            best["trial_id"] == control["trial_id"] and "best/ is the control" in sweep.report_md.read_text()
        )
    chosen = sweep.trial(best["trial_id"]).ppo / "policy" / "model.safetensors"
    assert (sweep.best_policy / "model.safetensors").read_bytes() == chosen.read_bytes()
    load_policy(sweep.best_policy)
    assert (
        "ppo:\n" in sweep.best_config.read_text()
        and str(best["ppo.kl_coef"]) in sweep.best_config.read_text()
    )
    report = sweep.report_md.read_text()
    assert f"**Best trial:** `{best['trial_id']}`" in report and f"--preset {sweep.best_config}" in report
    assert f"Control: {control['trial_id']} (the base config's own values: ppo.kl_coef=0.2" in report
    assert f"| {control['trial_id']} (control)" in report and "## Confirmation" in report
    assert sweep.report_html.is_file() and best["trial_id"] in sweep.report_html.read_text()
    history = pq.read_table(sweep.history).to_pylist()  # every report of every trial: the learning curves
    assert sorted((h["trial_id"], h["iteration"]) for h in history) == sorted(
        (r["trial_id"], i) for r in rows for i in (1, 2)
    ), history

    for r in rows:
        trial = sweep.trial(r["trial_id"])
        # each trial's roles are in its own placement group, the one the trial function runs in
        seen = json.loads((trial.path.parent / f"{r['trial_id']}.placements.json").read_text())
        groups = {a["placement_group"] for actors in seen.values() for a in actors}
        assert len(groups) == 1 and None not in groups, seen
        assert set(seen) == {"trial", "rollout worker", "reward scorer", "reference policy", "learner"}
        # the preset runs every role in the trial's process: the rollout, reward and reference roles and the
        # learner's one rank
        pids = {role: {a["pid"] for a in actors} for role, actors in seen.items()}
        assert all(p == pids["trial"] and len(p) == 1 for p in pids.values()), pids
        r["pg"] = groups.pop()
        log = [
            json.loads(line)["iteration"]
            for line in trial.ppo.joinpath("metrics.jsonl").read_text().splitlines()
        ]
        assert log == [1, 2]
    # trials that ran at the same time had reservations of their own; one that ended may hand its actor and
    # its reservation to the next (Tune's reuse_actors), never to one that runs beside it
    spans: dict[tuple[str, str], list[float]] = {}  # (trial, reservation) -> when it ran there
    for r in rows:
        path = sweep.trial(r["trial_id"]).path.parent / f"{r['trial_id']}.times.jsonl"
        for when, pg in (json.loads(line) for line in path.read_text().splitlines()):
            spans.setdefault((r["trial_id"], pg), []).append(when)
    overlapping = [
        (a, b) for a in spans for b in spans
        if a < b and min(spans[a]) < max(spans[b]) and min(spans[b]) < max(spans[a])
    ]  # fmt: skip
    assert all(a[0] != b[0] and a[1] != b[1] for a, b in overlapping), overlapping
    print(
        f"trials' reservations: {len({pg for _, pg in spans})} for {len(rows)} trials; side by side: {overlapping}"
    )

    # the crashed trial came back from its Tune checkpoint: PPO went on with iteration 2, never redid 1
    (crashed,) = [r for r in rows if r["ppo.kl_coef"] == 0.3]
    events = [tuple(json.loads(line)) for line in sweep.trial(crashed["trial_id"]).path.parent.joinpath(
        f"{crashed['trial_id']}.events.jsonl").read_text().splitlines()]  # fmt: skip
    first_phases = [e for e in events if e[1] == "generate"]
    assert first_phases == [(1, "generate"), (2, "generate"), (2, "generate")], events


def test_when_no_configuration_beats_the_control_best_is_the_control(
    ray_cluster: None, sweep_layout: RunLayout
) -> None:
    """A space whose one point is the base config's own, over two seeds: each seed of the trial runs the same
    PPO as the control's seed, so their policies are the same, the configuration's confirmed gain over the
    control (both over their two seeds) is exactly 0 (its interval holds 0), nothing passes the rule and
    best/ is the control."""
    cfg = tiny_config(ppo__total_steps=1, ppo__kl_mode="fixed", ppo__kl_coef=0.2)
    space = parse_search_space({"ppo.kl_coef": {"grid": [0.2]}}, cfg)
    settings = SweepSettings(
        scheduler="fifo",
        dev_examples=4,
        eval_examples=4,
        confirm_resamples=100,
        max_concurrent_trials=2,
        seeds=2,
    )
    result = tune_stage(cfg, sweep_layout, space, settings)
    sweep = sweep_layout.sweep()
    rows = pq.read_table(sweep.trials).to_pylist()
    controls = sorted((r for r in rows if r["control"]), key=lambda r: r["run.seed"])
    trials = sorted((r for r in rows if not r["control"]), key=lambda r: r["run.seed"])
    assert (
        [r["run.seed"] for r in controls]
        == [r["run.seed"] for r in trials]
        == [cfg.run.seed, cfg.run.seed + 1]
    )
    policy = "policy/model.safetensors"
    weights = {r["trial_id"]: (sweep.trial(r["trial_id"]).ppo / policy).read_bytes() for r in rows}
    for control, trial in zip(controls, trials, strict=True):  # one config, the same seed: the same policy
        assert weights[trial["trial_id"]] == weights[control["trial_id"]]
    assert weights[controls[0]["trial_id"]] != weights[controls[1]["trial_id"]]  # the seeds differ
    confirmation = result.metrics["confirmation"]
    (confirmed,) = confirmation["rows"]
    assert sorted(confirmed["trials"]) == sorted(
        r["trial_id"] for r in trials
    )  # the configuration, both seeds
    assert confirmation["control_trials"] == sorted(r["trial_id"] for r in controls)
    (comparison,) = json.loads(sweep.confirm.joinpath("metrics.json").read_text())["comparisons"]
    assert len(comparison["baseline_members"]) == len(comparison["policy_members"]) == 2
    assert confirmed["confirm/emp_f1"] == 0.0 and not confirmed["confirm/passes"], confirmed
    control = controls[0]
    assert result.metrics["best"]["trial_id"] == control["trial_id"]
    assert (sweep.best_policy / "model.safetensors").read_bytes() == weights[control["trial_id"]]
    report = sweep.report_md.read_text()
    assert (
        f"No configuration beat the control under the rule: best/ is the control {control['trial_id']}"
        in report
    )
    assert "none beat the control" in result.headline


def test_a_bad_space_fails_before_any_trial_naming_the_key(sweep_layout: RunLayout, tmp_path: Path) -> None:
    layout = sweep_layout
    base = ["--run-dir", str(layout.root), *tiny_overrides()]
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("ppo.kl_targt: {uniform: [1.0, 6.0]}\n")
    with pytest.raises(SystemExit, match=r"unknown config key 'ppo.kl_targt'.*did you mean 'ppo.kl_target'"):
        tune_main(["--space", str(bad_key), *base])
    zero = tmp_path / "zero.yaml"
    zero.write_text("ppo.kl_target: {uniform: [0.0, 6.0]}\n")
    with pytest.raises(SystemExit, match=r"ppo.kl_target=0.0 \(from uniform \[0.0, 6.0\]\).*must be > 0"):
        tune_main(["--space", str(zero), *base])
    ok = tmp_path / "ok.yaml"
    ok.write_text("ppo.kl_target: {uniform: [1.0, 6.0]}\n")
    with pytest.raises(SystemExit, match=r"--metric eval/emp_f1.*Fix: use dev/emp_f1"):
        tune_main(["--space", str(ok), "--metric", "eval/emp_f1", *base])
    assert not layout.sweep().path.exists(), "nothing may start before the space is valid"


def test_a_trial_too_big_for_the_cluster_fails_before_any_trial(
    ray_cluster: None, sweep_layout: RunLayout
) -> None:
    layout = sweep_layout
    cfg = tiny_config(resources__rollout_cpus=3.0)
    space = parse_search_space({"ppo.kl_coef": {"grid": [0.05, 0.3]}}, cfg)
    with pytest.raises(
        SweepError, match=r"no trial fits the cluster \(0 at once\).*rollout worker.*but the cluster has 2"
    ):
        tune_stage(cfg, layout, space, SweepSettings())
    assert not layout.sweep().path.exists()
