"""The sweep report: the trials table, the best trial and its reproduction command, the Pareto fronts
and the figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from pipeline.evaluation.pareto import metric_label, pareto_front, pareto_fronts
from pipeline.evaluation.sweep_report import (
    SweepSummary,
    learning_curves_figure,
    pareto_figure,
    sweep_markdown,
    write_sweep_report,
)
from pipeline.layout import SweepDir


def test_the_report_names_the_best_trial_and_shows_every_row() -> None:
    rows = [
        {"trial_id": "a_0", "status": "completed", "ppo.kl_coef": 0.05, "eval/emp_f1": 41.234, "dev/emp_f1": 40.0,
         "rollout/kl_k3": 0.5, "iteration": 4, "wall_s": 16.5},
        {"trial_id": "a_1", "status": "stopped", "ppo.kl_coef": 0.3, "eval/emp_f1": math.nan, "dev/emp_f1": 34.0,
         "rollout/kl_k3": 0.2, "iteration": 1, "wall_s": 10.5},
    ]  # fmt: skip
    text = sweep_markdown(
        rows,
        SweepSummary(["ppo.kl_coef"], "dev/emp_f1", "max", best=rows[0], command="emprl ppo --preset b.yaml"),
    )
    assert "**Best trial:** `a_0` (`ppo.kl_coef=0.05`): `dev/emp_f1` = 40.000." in text
    assert "```bash\nemprl ppo --preset b.yaml\n```" in text
    assert "| trial | status | ppo.kl_coef | Emp-F1 | dev Emp-F1 | KL (k3) | iterations | wall s |" in text
    assert "| a_0 (best) | completed | 0.05 | 41.23 | 40.00 | 0.500 | 4 | 16.5 |" in text
    assert "| a_1 | stopped | 0.3 | n/a | 34.00 | 0.200 | 1 | 10.5 |" in text


def test_without_a_completed_trial_the_report_says_so() -> None:
    rows = [{"trial_id": "a_0", "status": "error", "ppo.kl_coef": 0.05}]
    text = sweep_markdown(rows, SweepSummary(["ppo.kl_coef"], "dev/emp_f1", "max", best=None))
    assert "No trial completed" in text and "| a_0 | error | 0.05 |" in text


PNG = b"\x89PNG\r\n\x1a\n"

POINTS = [
    {"trial_id": "a", "f1": 40.0, "kl": 1.0},
    {"trial_id": "b", "f1": 42.0, "kl": 2.0},
    {"trial_id": "c", "f1": 39.0, "kl": 1.5},  # beaten by a on both
    {"trial_id": "d", "f1": math.nan, "kl": 0.1},  # best KL, but no F1
    {"trial_id": "e", "f1": 42.0, "kl": 2.0},  # tie with b
    {"trial_id": "f", "f1": 45.0, "kl": None},  # best F1, but no KL
    {"trial_id": "g", "f1": 38.0, "kl": 0.5},
    {"trial_id": "h", "f1": 40.0, "kl": 1.2},  # as good as a on F1, worse on KL
]


def test_the_pareto_front_keeps_undominated_rows_and_ties_and_skips_missing_values() -> None:
    assert pareto_front(POINTS, [("f1", "max"), ("kl", "min")]) == [0, 1, 4, 6]
    assert pareto_front(POINTS, [("f1", "min"), ("kl", "min")]) == [6]
    assert pareto_front(POINTS, [("f1", "max"), ("kl", "max")]) == [1, 4]
    assert pareto_front(POINTS, [("f1", "min"), ("kl", "max")]) == [1, 2, 4, 6]
    assert pareto_front(POINTS, [("kl", "min")]) == [3]


def test_a_mode_other_than_max_or_min_is_refused() -> None:
    with pytest.raises(ValueError, match="objective kl: mode 'lowest'"):
        pareto_front(POINTS, [("kl", "lowest")])  # type: ignore[list-item]


def _trial(i: int, status: str, f1: float, kl: float, ppl: float, **extra: Any) -> dict[str, Any]:
    """A ``trials.parquet`` row: eval/* only when completed, as a trial stopped by ASHA has none."""
    final = status == "completed"
    return {
        "trial_id": f"5f2c1_{i:05d}", "status": status, "ppo.kl_coef": 0.05 * (i + 1),
        "eval/emp_f1": f1 if final else math.nan, "eval/perplexity": ppl if final else math.nan,
        "dev/emp_f1": f1 - 1, "dev/perplexity": ppl + 1, "rollout/kl_k3": kl, "iteration": 4 if final else 1,
        "rollout/kl": -kl,  # a k1 estimate (can be < 0): the fronts must not use it
        "wall_s": 10.0, "feasible": kl <= 2, **extra,
    }  # fmt: skip


ROWS = [
    _trial(0, "completed", 41.0, 0.5, 20.0),
    _trial(1, "completed", 44.0, 1.5, 400.0),  # the best
    _trial(2, "completed", 40.0, 1.0, 25.0),  # beaten on KL by 0, on perplexity by 0
    _trial(3, "completed", 46.0, 3.0, 30.0),  # breaks rollout/kl <= 2
    _trial(4, "stopped", 30.0, 0.2, 50.0),  # no eval/*: absent from both eval panels
    _trial(5, "error", math.nan, math.nan, math.nan),
]

HISTORY = [
    {"trial_id": f"5f2c1_{i:05d}", "training_iteration": n, "iteration": 2 * n,
     "dev/emp_f1": 30.0 + i + n, "rollout/kl_k3": 0.1 * n, "rollout/kl_coef": 0.05, "reward/score": math.nan,
     "dev/perplexity": 30.0}
    for n in (1, 2) for i in range(5)
]  # fmt: skip


def _is_png(path: Path | None) -> bool:
    return path is not None and path.stat().st_size > len(PNG) and path.read_bytes()[: len(PNG)] == PNG


def test_the_fronts_use_eval_metrics_and_leave_out_trials_without_them() -> None:
    kl, ppl = pareto_fronts(ROWS)
    assert (kl.y, kl.x, kl.fallbacks) == ("eval/emp_f1", "rollout/kl_k3", ())
    assert kl.points == (0, 1, 2, 3) and kl.front == (0, 1, 3)
    assert (ppl.y, ppl.x) == ("eval/emp_f1", "eval/perplexity") and ppl.front == (0, 3)
    assert kl.label(kl.y) == "Emp-F1 (valid)" and kl.label(kl.x) == "KL per response, k3 (nats)"


def test_without_any_eval_value_the_fronts_fall_back_to_the_dev_metrics() -> None:
    stopped = [{**r, "eval/emp_f1": math.nan, "eval/perplexity": math.nan} for r in ROWS]
    kl, ppl = pareto_fronts(stopped)
    assert (kl.y, kl.fallbacks) == ("dev/emp_f1", ("dev/emp_f1",)) and kl.points == (0, 1, 2, 3, 4)
    assert kl.front == (0, 1, 3, 4)
    assert (ppl.y, ppl.x, ppl.fallbacks) == ("dev/emp_f1", "dev/perplexity", ("dev/emp_f1", "dev/perplexity"))
    assert ppl.label(ppl.x) == "perplexity (dev slice; no valid scores)"
    assert metric_label("dev/perplexity") == "perplexity (dev slice)"


def test_the_figures_are_drawn_as_png_files(tmp_path: Path) -> None:
    pareto = pareto_figure(ROWS, best_id="5f2c1_00001", path=tmp_path / "pareto.png")
    curves = learning_curves_figure(HISTORY, best_id="5f2c1_00001", path=tmp_path / "curves.png")
    assert _is_png(pareto) and _is_png(curves)
    stopped = [r for r in ROWS if r["status"] != "completed"]
    assert _is_png(pareto_figure(stopped, path=tmp_path / "dev.png"))


def test_without_a_plottable_value_no_figure_is_drawn(tmp_path: Path) -> None:
    assert pareto_figure(ROWS[5:], path=tmp_path / "pareto.png") is None
    assert learning_curves_figure([], path=tmp_path / "curves.png") is None
    only_nan = [{**h, "dev/emp_f1": math.nan, "rollout/kl_k3": math.nan} for h in HISTORY]
    assert learning_curves_figure(only_nan, path=tmp_path / "curves.png") is None
    assert not any(tmp_path.iterdir())


def test_the_written_report_lists_the_fronts_links_the_figures_and_escapes_values(tmp_path: Path) -> None:
    rows = [{**r, "reward.mode": "a<b" if i == 2 else "plain"} for i, r in enumerate(ROWS)]
    summary = SweepSummary(
        ["ppo.kl_coef", "reward.mode"], "dev/emp_f1", "max", best=rows[1],
        command="emprl ppo --preset <best>.yaml", constraints=["rollout/kl <= 2"],
    )  # fmt: skip
    files = write_sweep_report(rows, HISTORY, summary, SweepDir(tmp_path))
    assert files == {
        "report_md": tmp_path / "report.md",
        "report_html": tmp_path / "report.html",
        "pareto": tmp_path / "pareto.png",
        "curves": tmp_path / "learning_curves.png",
    }
    assert _is_png(files["pareto"]) and _is_png(files["curves"])
    text = files["report_md"].read_text()
    assert "6 trial(s): 4 completed, 1 stopped, 1 error; best by `dev/emp_f1` (max)." in text
    assert "Constraints: `rollout/kl <= 2`" in text
    assert "](pareto.png)" in text and "](learning_curves.png)" in text
    front = text[text.index("## Pareto front") : text.index("## Figures")]
    assert (
        "**Emp-F1 (valid) ↑ vs KL per response, k3 (nats) ↓: 3 of 4 trial(s) on the front**\n\n"
        "| trial | status | Emp-F1 (valid) | KL per response, k3 (nats) |\n|---|---|---|---|\n"
        "| 5f2c1_00000 | completed | 41.00 | 0.500 |\n"
        "| 5f2c1_00001 (best) | completed | 44.00 | 1.500 |\n"
        "| 5f2c1_00003 (infeasible) | completed | 46.00 | 3.000 |\n"
    ) in front
    assert "| 5f2c1_00003 (infeasible) | completed | 46.00 | 30.00 |" in front
    assert "5f2c1_00002" not in front and "5f2c1_00004" not in front
    assert "| trial | status | feasible | ppo.kl_coef | reward.mode |" in text
    assert "| 5f2c1_00002 | completed | yes | 0.15 | a<b |" in text
    page = files["report_html"].read_text()
    assert "<td>a&lt;b</td>" in page and "a<b" not in page
    assert "<pre>emprl ppo --preset &lt;best&gt;.yaml</pre>" in page
    assert '<img src="pareto.png"' in page and '<img src="learning_curves.png"' in page
    assert "<h3>Emp-F1 (valid) ↑ vs perplexity (valid) ↓: 2 of 4 trial(s) on the front</h3>" in page


def test_a_sweep_without_constraints_has_no_feasible_column() -> None:
    rows = [{k: v for k, v in r.items() if k != "feasible"} for r in ROWS]
    text = sweep_markdown(rows, SweepSummary(["ppo.kl_coef"], "dev/emp_f1", "max", best=None))
    assert "| trial | status | ppo.kl_coef |" in text and "feasible" not in text
    assert "| 5f2c1_00003 | completed | 46.00 | 3.000 |" in text  # a plain front entry


def test_the_pareto_figure_shows_each_trials_interval() -> None:
    from matplotlib.container import ErrorbarContainer
    from matplotlib.figure import Figure

    from pipeline.evaluation.sweep_report import Z95, _draw_front

    rows = [
        {"trial_id": "t_0", "status": "completed", "eval/emp_f1": 40.0, "eval/emp_f1_se": 1.0,
         "rollout/kl_k3": 1.0, "eval/perplexity": 20.0},
        {"trial_id": "t_1", "status": "completed", "eval/emp_f1": 42.0, "eval/emp_f1_se": 0.5,
         "rollout/kl_k3": 2.0, "eval/perplexity": 25.0},
        {"trial_id": "t_2", "status": "completed", "eval/emp_f1": 41.0, "eval/emp_f1_se": math.nan,
         "rollout/kl_k3": 0.5, "eval/perplexity": 30.0},  # no interval: a point without a bar
    ]  # fmt: skip
    front = pareto_fronts(rows)[0]
    ax = Figure().subplots()
    _draw_front(ax, rows, front, best_id=None)
    (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = sorted(tuple(map(tuple, s)) for s in bars.lines[2][0].get_segments())
    assert segments == [
        ((1.0, 40.0 - Z95), (1.0, 40.0 + Z95)),
        ((2.0, 42.0 - Z95 * 0.5), (2.0, 42.0 + Z95 * 0.5)),
    ]
