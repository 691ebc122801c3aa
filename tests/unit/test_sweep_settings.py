"""Sweep settings are checked before Ray starts: scheduler and search combinations, PBT's needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jobs.stages.tune import SweepError, SweepSettings
from pipeline.config import load_config
from pipeline.config.search_space import parse_search_space

BASE = load_config("local", ["ppo.save_every=1"])


def _check(space: dict[str, dict[str, list[object]]], **settings: object) -> None:
    parsed = parse_search_space(space, BASE)
    SweepSettings(**settings).check(parsed, [c for _, c in parsed.probe_configs(BASE)])  # type: ignore[arg-type]


def test_valid_combinations_pass_and_bad_ones_name_the_fix() -> None:
    kl = {"ppo.kl_coef": {"uniform": [0.05, 0.5]}}
    _check(kl, scheduler="pbt")
    _check(kl, search="optuna", objectives=("rollout/kl:min",))
    with pytest.raises(SweepError, match=r"--objective rollout/kl:min: a multi-objective search is Optuna's"):
        _check(kl, objectives=("rollout/kl:min",))
    with pytest.raises(SweepError, match=r"ppo.kl_coef is a grid, which Optuna cannot sample"):
        _check({"ppo.kl_coef": {"grid": [0.1, 0.2]}}, search="optuna")
    with pytest.raises(SweepError, match=r"pbt with --search optuna"):
        _check(kl, scheduler="pbt", search="optuna")
    with pytest.raises(SweepError, match=r"'report_every': 0"):
        _check(kl, report_every=0)


def test_pbt_needs_a_checkpoint_per_report_and_a_fixed_reservation() -> None:
    kl = parse_search_space({"ppo.kl_coef": {"uniform": [0.05, 0.5]}}, BASE)
    every_two = BASE.with_overrides({"ppo.save_every": 2})
    with pytest.raises(SweepError, match=r"ppo.save_every=2 does not divide --report-every 1"):
        SweepSettings(scheduler="pbt").check(kl, [every_two])
    SweepSettings(scheduler="pbt", report_every=2).check(kl, [every_two])
    with pytest.raises(SweepError, match=r"changes the PPO roles' resources"):
        _check({"rollout.num_workers": {"choice": [1, 2]}}, scheduler="pbt")
    _check({"rollout.num_workers": {"choice": [1, 2]}}, scheduler="asha")


def test_a_trial_tells_its_restarts_from_pbt_exploits(tmp_path: Path) -> None:
    from jobs.stages.tune.trial import record_start

    starts = tmp_path / "starts" / "t1.txt"
    config = {"ppo.kl_coef": np.float64(0.2), "ppo.kl_mode": "fixed"}
    assert record_start(starts, config) == ["first"]
    assert record_start(starts, dict(config)) == ["first", "restart"]  # a failure or a lost node
    mutated = {**config, "ppo.kl_coef": 0.24}  # PBT's explore step after cloning another trial
    assert record_start(starts, mutated) == ["first", "restart", "exploit"]
    assert record_start(starts, mutated) == ["first", "restart", "exploit", "restart"]
    starts.write_text("2\n")  # a sweep from before the starts recorded their config
    assert record_start(starts, config) == ["2", "restart"]
