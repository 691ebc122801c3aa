"""Stages as library functions: PPO and evaluation inside a reservation the caller made (as a Tune
trial does), the bundle list the roles really use, sinks, and resume with changed hyperparameters."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import ppo_inputs
import pytest
import ray
from ppo_inputs import linked_run
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.cluster.placement import Reservation, ReservationError, evaluation_bundles, ppo_bundles
from actors.ppo.controller import PPOController
from actors.ppo.metrics import IterationReport
from jobs.stages import evaluate_stage, load_evaluation_inputs, ppo_stage
from pipeline.config import Config
from pipeline.layout import RunLayout

pytestmark = pytest.mark.integration


def tiny_config(**overrides: Any) -> Config:
    """:func:`ppo_inputs.tiny_config` with every PPO role an actor placed in its bundle (what these tests check)."""
    return ppo_inputs.tiny_config(resources__in_process_roles=False, **overrides)


TRIAL_BUNDLE = {"CPU": 0.1}
"""Bundle 0 of a Tune trial's placement group: the trial function itself."""


def _placements(controller: PPOController) -> dict[str, list[dict[str, Any]]]:
    """Where every actor of every running role group is, by role, in rank order."""
    groups = controller.groups()
    refs = {role: [a.placement.remote() for a in g.actors] for role, g in groups.items()}
    return {role: ray.get(r) for role, r in refs.items()}


def _stage_in_trial(cfg: Config, root: str) -> dict[str, Any]:
    """Runs inside bundle 0 of a caller's placement group, as a Tune trial function does."""
    from actors.cluster.placement import Reservation as TrialReservation

    reservation = TrialReservation.current(first=1)
    seen: dict[str, Any] = {"reports": []}

    def look(controller: PPOController, iteration: int, phase: str) -> None:
        if (iteration, phase) == (1, "update"):
            seen["placements"] = _placements(controller)

    def sink(report: IterationReport) -> None:
        seen["reports"].append(
            (
                report.iteration,
                report.metrics["iteration"],
                str(report.checkpoint) if report.checkpoint else None,
            )
        )

    layout = RunLayout(Path(root))
    result = ppo_stage(cfg, layout, sinks=[sink], hooks=[look], reservation=reservation)
    seen["iterations"] = result.metrics["iterations"]
    evaluation = evaluate_stage(
        cfg, layout, load_evaluation_inputs(layout, max_examples=8), n_resamples=20, reservation=reservation
    )
    seen["emp_f1"] = evaluation.metrics["emp_f1"]
    seen["pg"] = ray.get_runtime_context().get_placement_group_id()
    return seen


def _check_roles_match_bundles(placements: dict[str, list[dict[str, Any]]], cfg: Config, pg_id: str) -> None:
    bundles = ppo_bundles(cfg)
    assert {role: len(p) for role, p in placements.items()} == {
        role: sum(b.role == role for b in bundles) for role in {b.role for b in bundles}
    }
    for b in bundles:
        actor = placements[b.role][b.rank]
        assert actor["placement_group"] == pg_id, (b.role, b.rank)
        assert actor["resources"] == pytest.approx(dict(b.resources)), (b.role, b.rank)


def test_ppo_and_evaluation_run_inside_the_callers_reservation_and_create_no_placement_group(
    ray_cluster: None, sweep_run: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(rollout__num_workers=2, ppo__total_steps=2, ppo__save_every=1, rollout__batch_size=4)
    layout = linked_run(sweep_run, tmp_path)
    bundles = [TRIAL_BUNDLE, *(dict(b.resources) for b in ppo_bundles(cfg))]
    # evaluation with as many workers as rollout workers fits the PPO bundles it follows
    assert [dict(b.resources) for b in evaluation_bundles(cfg, 2)] == bundles[1:4]
    pg = placement_group(bundles, strategy="PACK")
    ray.get(pg.ready(), timeout=60)
    before = set(placement_group_table())
    try:
        # the trial function travels by value: Ray workers cannot import this test module
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        trial = ray.remote(_stage_in_trial).options(
            num_cpus=TRIAL_BUNDLE["CPU"],
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            ),
        )
        seen = ray.get(trial.remote(cfg, str(layout.root)), timeout=600)
    finally:
        created = set(placement_group_table()) - before
        remove_placement_group(pg)
    assert created == set(), "a stage inside a reservation must create no placement group"
    assert seen["pg"] == pg.id.hex()
    _check_roles_match_bundles(seen["placements"], cfg, pg.id.hex())
    # the sink saw every iteration's row and the checkpoint each one wrote
    assert seen["iterations"] == 2
    assert [(i, row_i) for i, row_i, _ in seen["reports"]] == [(1, 1), (2, 2)]
    assert all(ckpt is not None and Path(ckpt).is_dir() for _, _, ckpt in seen["reports"])
    assert set(seen["emp_f1"]) == {"sft", "ppo"}
    assert layout.evaluate.report_html.is_file()


def test_a_stage_reserves_exactly_its_bundle_list_and_releases_it(
    ray_cluster: None, sweep_run: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(reward__num_scorers=2, ppo__total_steps=1)
    layout = linked_run(sweep_run, tmp_path)
    seen: dict[str, Any] = {}

    def look(controller: PPOController, iteration: int, phase: str) -> None:
        if phase == "update":
            seen["placements"] = _placements(controller)
            seen["pg"] = controller.reservation.group.id.hex()
            seen["specs"] = controller.reservation.bundle_specs()

    before = set(placement_group_table())
    ppo_stage(cfg, layout, hooks=[look])
    assert seen["specs"] == [pytest.approx(dict(b.resources)) for b in ppo_bundles(cfg)]
    _check_roles_match_bundles(seen["placements"], cfg, seen["pg"])
    table = placement_group_table()
    assert set(table) - before == {seen["pg"]}, "one placement group for every PPO role"
    assert table[seen["pg"]]["state"] == "REMOVED"


def test_a_reservation_that_cannot_hold_the_roles_fails_at_once_naming_requested_vs_available(
    ray_cluster: None,
) -> None:
    cfg = tiny_config(rollout__num_workers=2)
    with pytest.raises(
        ReservationError, match=r"needs 8.6 CPU \(1 rollout worker x \{CPU: 0.2\}.*cluster has 2"
    ):
        Reservation.create("PPO", ppo_bundles(tiny_config(resources__learner_cpus=8.0)))
    small = placement_group([TRIAL_BUNDLE, *[{"CPU": 0.2}] * 4], strategy="PACK")
    ray.get(small.ready(), timeout=60)
    try:
        with pytest.raises(ReservationError, match=r"needs 5 bundles .* holds 4 after bundle 1"):
            Reservation(small, first=1).place("PPO", ppo_bundles(cfg))
        with pytest.raises(
            ReservationError, match=r"rollout worker 0 needs \{CPU: 0.5\} but bundle 1 .*\{CPU: 0.2\}"
        ):
            Reservation(small, first=1).place("PPO", ppo_bundles(tiny_config(resources__rollout_cpus=0.5)))
    finally:
        remove_placement_group(small)


def test_on_an_autoscaling_cluster_a_reservation_waits_for_nodes_then_fails_naming_the_wait(
    ray_cluster: None, caplog: pytest.LogCaptureFixture
) -> None:
    # resources.scale_up_wait_s > 0: the shortfall is logged and the placement group left pending (the
    # demand an autoscaler scales up for); no node comes on this local cluster, so it fails after the wait
    bundles = ppo_bundles(tiny_config(resources__learner_cpus=8.0))
    before = set(placement_group_table())
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="actors.cluster.placement"):
        with pytest.raises(
            ReservationError, match=r"after 3 s the cluster.*raise resources\.scale_up_wait_s"
        ):
            Reservation.create("PPO", bundles, scale_up_wait_s=3.0)
    assert 3.0 <= time.perf_counter() - start < 60
    assert "waiting up to 3 s for the autoscaler" in caplog.text
    assert "needs 8.6 CPU" in caplog.text
    leftover = {k: v for k, v in placement_group_table().items() if k not in before}
    assert all(v["state"] == "REMOVED" for v in leftover.values())


def test_resume_takes_hyperparameters_from_the_config_in_force(
    ray_cluster: None, sweep_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = linked_run(sweep_run, tmp_path)
    base = {"ppo__total_steps": 2, "ppo__save_every": 2, "ppo__lr_schedule": "constant"}
    first = ppo_stage(tiny_config(**base), layout).metrics
    state = json.loads(
        (Path(first["policy"]).parent / "checkpoints" / "iter_000002" / "controller.json").read_text()
    )
    assert state["kl"]["target"] == 6.0 and state["config"]["ppo"]["kl_target"] == 6.0
    reached = state["kl"]["value"]

    rows: list[dict[str, float]] = []
    kl: dict[str, float] = {}

    def look(controller: PPOController, iteration: int, phase: str) -> None:
        kl.update(target=controller.kl.target, horizon=controller.kl.horizon, start=controller.kl.value)  # type: ignore[attr-defined]

    changed = tiny_config(
        **{**base, "ppo__total_steps": 3, "ppo__kl_target": 0.5, "ppo__kl_horizon": 50, "ppo__lr": 2e-3}
    )
    with caplog.at_level(logging.INFO, logger="actors.ppo.controller"):
        ppo_stage(changed, layout, resume=True, hooks=[look], sinks=[lambda r: rows.append(r.metrics)])
    # the state came from the checkpoint, the targets from the config in force
    assert kl == {"target": 0.5, "horizon": 50, "start": reached}
    (row,) = rows
    assert row["iteration"] == 3 and row["rollout/kl_coef"] == reached
    assert row["ppo/lr"] == pytest.approx(2e-3)
    metrics = [json.loads(line) for line in layout.ppo.log.read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2, 3]
    assert [m["ppo/lr"] for m in metrics[:2]] == pytest.approx([1e-3, 1e-3])
    logged = " ".join(
        r.getMessage() for r in caplog.records if "differ from the checkpoint" in r.getMessage()
    )
    for change in ("ppo.kl_target 6.0 -> 0.5", "ppo.kl_horizon 10000 -> 50", "ppo.lr 0.001 -> 0.002"):
        assert change in logged, logged
