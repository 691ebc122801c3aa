"""A sweep's objective: the ranked metric, constraints (hard or as a penalty) and extra objectives."""

from __future__ import annotations

import math

import pytest

from pipeline.config.objective import PENALISED, Constraint, Objective, ObjectiveError


def test_constraints_parse_and_measure_their_violation() -> None:
    kl = Constraint.parse(" rollout/kl <= 2 ")
    assert (kl.key, kl.op, kl.bound) == ("rollout/kl", "<=", 2.0) and str(kl) == "rollout/kl <= 2"
    assert kl.violation(1.5) == 0 and kl.violation(3.5) == 1.5
    assert kl.violation(math.nan) == math.inf and kl.violation(None) == math.inf
    f1 = Constraint.parse("eval/emp_f1>=40")  # eval/* may be constrained: it is known at the end
    assert f1.violation(38.0) == 2.0 and f1.violation(41.0) == 0
    with pytest.raises(ObjectiveError, match=r"write KEY<=NUMBER"):
        Constraint.parse("rollout/kl < 2")
    with pytest.raises(ObjectiveError, match=r"--constraint kl: not reported"):
        Constraint.parse("kl<=2")


def test_the_penalty_worsens_the_metric_by_the_known_violations() -> None:
    objective = Objective.parse(
        "dev/emp_f1", "max", constraints=["rollout/kl<=2", "eval/perplexity<=100"], penalty=5
    )
    assert objective.ranked_metric == PENALISED and objective.metrics == [PENALISED]
    # mid-run: only the KL constraint is known
    assert objective.penalised({"dev/emp_f1": 40.0, "rollout/kl": 3.0}) == {PENALISED: 35.0}
    # the final report also knows the perplexity
    final = {"dev/emp_f1": 40.0, "rollout/kl": 1.0, "eval/perplexity": 120.0}
    assert objective.penalised(final) == {PENALISED: 40.0 - 5 * 20}
    minimise = Objective.parse("rollout/kl", "min", constraints=["dev/emp_f1>=30"], penalty=2)
    assert minimise.penalised({"rollout/kl": 1.0, "dev/emp_f1": 25.0}) == {PENALISED: 11.0}
    assert Objective.parse("dev/emp_f1").penalised({"dev/emp_f1": 1.0}) == {}


def test_the_best_row_is_completed_feasible_and_best_on_the_metric() -> None:
    rows = [
        {"trial_id": "a", "status": "completed", "dev/emp_f1": 45.0, "rollout/kl": 3.0},
        {"trial_id": "b", "status": "completed", "dev/emp_f1": 41.0, "rollout/kl": 1.0},
        {"trial_id": "c", "status": "stopped", "dev/emp_f1": 50.0, "rollout/kl": 0.5},
        {"trial_id": "d", "status": "completed", "dev/emp_f1": math.nan, "rollout/kl": 0.5},
    ]
    assert Objective.parse("dev/emp_f1")
    best = Objective.parse("dev/emp_f1").best(rows)
    assert best is not None and best["trial_id"] == "a"
    constrained = Objective.parse("dev/emp_f1", constraints=["rollout/kl<=2"])
    best = constrained.best(rows)
    assert best is not None and best["trial_id"] == "b"
    assert not constrained.feasible(rows[0]) and constrained.feasible(rows[1])
    low_kl = Objective.parse("rollout/kl", "min").best(rows)
    assert low_kl is not None and low_kl["trial_id"] == "d"  # its KL is finite; c was stopped
    assert Objective.parse("dev/emp_f1", constraints=["rollout/kl<=0.1"]).best(rows) is None


def test_bad_objectives_fail_naming_the_option_and_the_fix() -> None:
    with pytest.raises(ObjectiveError, match=r"--metric eval/emp_f1.*Fix: use dev/emp_f1"):
        Objective.parse("eval/emp_f1")
    with pytest.raises(ObjectiveError, match=r"--mode 'up'"):
        Objective.parse("dev/emp_f1", "up")
    with pytest.raises(ObjectiveError, match=r"--penalty 1.0: a penalty weighs constraint violations"):
        Objective.parse("dev/emp_f1", penalty=1.0)
    with pytest.raises(ObjectiveError, match=r"--penalty -1.0: must be"):
        Objective.parse("dev/emp_f1", constraints=["rollout/kl<=1"], penalty=-1.0)
    with pytest.raises(ObjectiveError, match=r"--objective dev/klx: not reported"):
        Objective.parse("dev/emp_f1", also=["dev/klx:min"])
    two = Objective.parse("dev/emp_f1", also=["rollout/kl:min"])
    assert two.metrics == ["dev/emp_f1", "rollout/kl"] and two.modes == ["max", "min"]
    assert two.describe() == "dev/emp_f1 (max) and rollout/kl (min)"
