"""The sweep report: the trials table, the best trial and its reproduction command."""

from __future__ import annotations

import math

from pipeline.evaluation.sweep_report import sweep_markdown


def test_the_report_names_the_best_trial_and_shows_every_row() -> None:
    rows = [
        {"trial_id": "a_0", "status": "completed", "ppo.kl_coef": 0.05, "eval/emp_f1": 41.234, "dev/emp_f1": 40.0,
         "rollout/kl": 0.5, "iteration": 4, "wall_s": 16.5},
        {"trial_id": "a_1", "status": "stopped", "ppo.kl_coef": 0.3, "eval/emp_f1": math.nan, "dev/emp_f1": 34.0,
         "rollout/kl": 0.2, "iteration": 1, "wall_s": 10.5},
    ]  # fmt: skip
    text = sweep_markdown(
        rows,
        keys=["ppo.kl_coef"],
        metric="dev/emp_f1",
        mode="max",
        best=rows[0],
        command="emprl ppo --preset b.yaml",
    )
    assert "**Best trial:** `a_0` (`ppo.kl_coef=0.05`): `dev/emp_f1` = 40.000." in text
    assert "```bash\nemprl ppo --preset b.yaml\n```" in text
    assert "| trial | status | ppo.kl_coef | Emp-F1 | dev Emp-F1 | KL | iterations | wall s |" in text
    assert "| a_0 (best) | completed | 0.05 | 41.23 | 40.00 | 0.500 | 4 | 16.5 |" in text
    assert "| a_1 | stopped | 0.3 | n/a | 34.00 | 0.200 | 1 | 10.5 |" in text


def test_without_a_completed_trial_the_report_says_so() -> None:
    rows = [{"trial_id": "a_0", "status": "error", "ppo.kl_coef": 0.05}]
    text = sweep_markdown(
        rows, keys=["ppo.kl_coef"], metric="dev/emp_f1", mode="max", best=None, command=None
    )
    assert "No trial completed" in text and "| a_0 | error | 0.05 |" in text
