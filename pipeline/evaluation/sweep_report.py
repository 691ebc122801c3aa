"""A sweep's ``report.md`` and ``report.html``: one row per trial (swept values, final metrics, status),
the best trial with the command that reproduces it, the Pareto fronts of Emp-F1 against KL and
perplexity, and two figures (the fronts, the learning curves). Rows are the ``trials.parquet`` records,
history the ``history.parquet`` ones (one per Tune report)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipeline.config.search_space import SEED_KEY
from pipeline.evaluation.control import (
    ASHA_NOTE,
    asha_table,
    confirmation_section,
    control_sentence,
    dev_pilot_sentence,
    has_seeds,
    seeds_note,
    seeds_table,
)
from pipeline.evaluation.figures import learning_curves_figure, log_scale_if_wide, save_figure, short_id
from pipeline.evaluation.pareto import (
    AGAINST,
    NAMES,
    OBJECTIVE,
    Front,
    Mode,
    is_finite,
    pareto_fronts,
)
from pipeline.evaluation.report import (
    STYLE,
    ReportFigure,
    figures_html,
    figures_markdown,
    format_value,
    md_cell,
)
from pipeline.layout import SweepDir
from pipeline.storage import publish

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("eval/emp_f1", "Emp-F1", 2),
    ("eval/emp_f1_se", "± SE", 2),
    ("vs_control/emp_f1", "Δ Emp-F1 vs control", 2),
    ("eval/er_f1", "ER F1", 2),
    ("eval/ip_f1", "IP F1", 2),
    ("eval/ex_f1", "EX F1", 2),
    ("eval/perplexity", "ppl", 2),
    ("vs_control/perplexity_pct", "Δ ppl % vs control", 1),
    ("eval/dist2", "Dist-2", 4),
    ("dev/emp_f1", "dev Emp-F1", 2),
    ("dev/emp_f1_se", "± SE", 2),
    ("rollout/kl_k3", "KL (k3)", 3),
    ("reward/score", "reward", 3),
    ("iteration", "iterations", 0),
    ("wall_s", "wall s", 1),
    ("failures", "failures", 0),
    ("exploits", "exploits", 0),
)
"""Metric columns of the table: (row key, header, decimals)."""

STATUS_STYLE = {"completed": ("o", "tab:blue"), "stopped": ("s", "tab:orange"), "error": ("X", "tab:red")}
"""Marker and colour of a trial in the Pareto figure, by status."""

ARROWS: dict[str, str] = {"max": "↑", "min": "↓"}
FRONT_NOTE = (
    "Trials that no other trial beats on both metrics (↑ higher is better, ↓ lower is better), in order "
    "of the second metric; a trial missing either value is left out."
)
CONSTRAINT_NOTE = "a trial that breaks one cannot be the best"
PRE_STYLE = "pre { background: #f7f7f7; padding: 0.5em 1em; overflow-x: auto; }\n"
SE_OF = {"eval/emp_f1": "eval/emp_f1_se", "dev/emp_f1": "dev/emp_f1_se"}
"""The standard error that gives a plotted metric its interval."""
Z95 = 1.96
CAPTIONS = {
    "pareto": "Emp-F1 against KL and perplexity, one point per trial; bars: 95 % interval of each trial's "
    "Emp-F1 over the evaluation's examples (±1.96 bootstrap SE); step line: Pareto front; "
    "star: best trial; diamond: the control; hollow: breaks a constraint.",
    "curves": "Learning curves per PPO iteration, one line per trial (the best one thicker).",
}


def pareto_figure(
    rows: Sequence[Mapping[str, Any]],
    *,
    objective: tuple[str, Mode] = OBJECTIVE,
    against: Sequence[tuple[str, Mode]] = AGAINST,
    best_id: str | None = None,
    path: Path,
) -> Path | None:
    """One panel per :func:`pareto_fronts` pair: every trial with both values (marker by status, hollow
    when it breaks a constraint, labelled with its id's tail), the front as a step line and the best
    trial as a star; ``None`` when no pair has a point."""
    fronts = pareto_fronts(rows, objective=objective, against=against)
    if not fronts:
        return None
    fig = Figure(figsize=(5.2 * len(fronts), 4.2))
    axes = fig.subplots(1, len(fronts), squeeze=False)[0]
    for ax, front in zip(axes, fronts, strict=True):
        _draw_front(ax, rows, front, best_id)
    plotted = [rows[i] for f in fronts for i in f.points]
    handles = [
        Line2D([], [], linestyle="", marker=marker, color=color, label=status)
        for status, (marker, color) in STATUS_STYLE.items()
        if any(r.get("status") == status for r in plotted)
    ]
    if not all(_feasible(r) for r in plotted):
        handles.append(
            Line2D([], [], linestyle="", marker="o", mfc="none", color="gray", label="breaks a constraint")
        )
    if any(r.get("control") for r in plotted):
        handles.append(
            Line2D([], [], linestyle="", marker="D", ms=9, mfc="none", mec="black", label="control")
        )
    if any(r.get("trial_id") == best_id for r in plotted):
        handles.append(Line2D([], [], linestyle="", marker="*", ms=12, mfc="gold", mec="black", label="best"))
    handles.append(Line2D([], [], color="black", linewidth=1, label="Pareto front"))
    axes[0].legend(handles=handles, fontsize=7)
    fig.suptitle("Trade-offs across trials")
    fig.tight_layout()
    return save_figure(fig, path)


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep report says besides its rows."""

    keys: Sequence[str]
    """The swept dotted keys (a column each)."""
    metric: str
    """The objective's metric."""
    mode: str
    """``max`` or ``min``."""
    best: Mapping[str, Any] | None
    """The chosen row, or ``None`` when no trial qualifies."""
    command: str | None = None
    """The command that reproduces the best trial."""
    title: str = "Sweep"
    constraints: Sequence[str] = ()
    """The objective's constraints, shown as given."""
    figures: Sequence[ReportFigure] = ()
    """Figures to link (paths relative to the report)."""
    dev_pilot: Mapping[str, Any] | None = None
    """The pilot that sized the dev slice (``dev_pilot.json``), if one ran."""
    dev_examples: int | None = None
    """The dev slice's size."""
    asha: Sequence[Mapping[str, Any]] = ()
    """ASHA's comparisons (``asha.jsonl``)."""
    scheduling: str = ""
    """How ASHA's grace period and reduction factor were chosen, if derived."""
    confirmation: Mapping[str, Any] | None = None
    """The confirmation's outcome (:func:`~pipeline.evaluation.control.confirmation_section`), if one ran."""


def sweep_markdown(rows: Sequence[Mapping[str, Any]], summary: SweepSummary) -> str:
    """The Markdown report of ``rows`` (each with ``trial_id``, ``status``, the swept keys and the
    :data:`COLUMNS` metrics) under ``summary``."""
    s = summary
    lines = [f"# {s.title}", "", f"{_counts(rows)}; best by `{s.metric}` ({s.mode}).", ""]
    for sentence in _sentences(rows, s):
        lines += [sentence, ""]
    if s.constraints:
        lines += ["Constraints: " + ", ".join(f"`{c}`" for c in s.constraints) + f" ({CONSTRAINT_NOTE}).", ""]
    if s.best is not None:
        swept = ", ".join(f"`{k}={_value(s.best.get(k))}`" for k in s.keys)
        lines += [
            f"**Best trial:** `{s.best['trial_id']}` ({swept}): `{s.metric}` = {format_value(s.best.get(s.metric), 3)}.",
            "",
        ]
        if s.command:
            lines += ["Reproduce it:", "", "```bash", s.command, "```", ""]
    else:
        headline, rest = _no_best(rows, s.constraints)
        lines += [f"**{headline}**: {rest}", ""]
    if s.confirmation is not None:
        note, verdict, header, cells = confirmation_section(s.confirmation, rows, s.keys)
        lines += ["## Confirmation", "", note, "", f"**{verdict}**", "", *_md_table(header, cells), ""]
    lines += ["## Pareto front", "", FRONT_NOTE, ""]
    for caption, header, cells in _front_tables(rows, s.best):
        lines += [f"**{caption}**", "", *_md_table(header, cells), ""]
    for title, note, header, cells in _noise_tables(rows, s):
        lines += [f"## {title}", "", note, "", *_md_table(header, cells), ""]
    if s.figures:
        lines += ["## Figures", "", *figures_markdown(s.figures)]
    lines += ["## Trials", "", *_md_table(*_trials_table(rows, s.keys, s.best)), ""]
    return "\n".join(lines)


def _sentences(rows: Sequence[Mapping[str, Any]], s: SweepSummary) -> list[str]:
    """The report's opening sentences: the control, the dev slice's size and how ASHA was set."""
    return [
        t
        for t in (
            control_sentence(rows, s.keys, s.best),
            dev_pilot_sentence(s.dev_pilot, s.dev_examples),
            s.scheduling and s.scheduling + ".",
        )
        if t
    ]


def _noise_tables(
    rows: Sequence[Mapping[str, Any]], s: SweepSummary
) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """Title, note, header and cells of the tables about noise: ASHA's comparisons, the seeds."""
    tables = []
    if s.asha:
        tables.append(("ASHA's comparisons", ASHA_NOTE, *asha_table(s.asha, s.mode)))
    if has_seeds(rows, s.keys):
        tables.append(("Configurations over seeds", seeds_note(rows, s.keys), *seeds_table(rows, s.keys)))
    return tables


def sweep_html(rows: Sequence[Mapping[str, Any]], summary: SweepSummary) -> str:
    """The HTML twin of :func:`sweep_markdown`: inline styles, figures as relative links, every value
    escaped."""
    s = summary
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(s.title)}</title><style>{STYLE}{PRE_STYLE}</style></head><body>",
        f"<h1>{e(s.title)}</h1>",
        f"<p>{e(_counts(rows))}; best by <code>{e(s.metric)}</code> ({e(s.mode)}).</p>",
        *(f"<p>{e(sentence)}</p>" for sentence in _sentences(rows, s)),
    ]
    if s.constraints:
        shown = ", ".join(f"<code>{e(c)}</code>" for c in s.constraints)
        parts.append(f"<p>Constraints: {shown} ({e(CONSTRAINT_NOTE)}).</p>")
    if s.best is not None:
        swept = ", ".join(f"<code>{e(f'{k}={_value(s.best.get(k))}')}</code>" for k in s.keys)
        parts.append(
            f"<p><b>Best trial:</b> <code>{e(str(s.best['trial_id']))}</code> ({swept}): "
            f"<code>{e(s.metric)}</code> = {e(format_value(s.best.get(s.metric), 3))}.</p>"
        )
        if s.command:
            parts += ["<p>Reproduce it:</p>", f"<pre>{e(s.command)}</pre>"]
    else:
        headline, rest = _no_best(rows, s.constraints)
        parts.append(f"<p><b>{e(headline)}</b>: {e(rest)}</p>")
    if s.confirmation is not None:
        note, verdict, header, cells = confirmation_section(s.confirmation, rows, s.keys)
        parts += [
            "<h2>Confirmation</h2>", f'<p class="note">{e(note)}</p>', f"<p><b>{e(verdict)}</b></p>",
            _html_table(header, cells),
        ]  # fmt: skip
    parts += ["<h2>Pareto front</h2>", f'<p class="note">{e(FRONT_NOTE)}</p>']
    for caption, header, cells in _front_tables(rows, s.best):
        parts += [f"<h3>{e(caption)}</h3>", _html_table(header, cells)]
    for title, note, header, cells in _noise_tables(rows, s):
        parts += [f"<h2>{e(title)}</h2>", f'<p class="note">{e(note)}</p>', _html_table(header, cells)]
    if s.figures:
        parts += ["<h2>Figures</h2>", *figures_html(s.figures)]
    parts += ["<h2>Trials</h2>", _html_table(*_trials_table(rows, s.keys, s.best)), "</body></html>"]
    return "\n".join(parts) + "\n"


def write_sweep_report(
    rows: Sequence[Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    summary: SweepSummary,
    sweep: SweepDir,
) -> dict[str, Path]:
    """Draws the Pareto and learning-curve figures and writes ``report.md`` and ``report.html`` into the
    ``sweep`` folder (each published, for a folder that mirrors a URI); returns their paths as
    ``report_md``, ``report_html``, ``pareto`` and ``curves`` (a figure only when drawn)."""
    best_id = None if summary.best is None else str(summary.best["trial_id"])
    drawn = {
        "pareto": pareto_figure(rows, best_id=best_id, path=sweep.pareto_figure),
        "curves": learning_curves_figure(history, best_id=best_id, path=sweep.curves_figure),
    }
    figures = {name: path for name, path in drawn.items() if path is not None}
    linked = replace(
        summary, figures=[ReportFigure(path.name, CAPTIONS[name]) for name, path in figures.items()]
    )
    sweep.path.mkdir(parents=True, exist_ok=True)
    markdown, page = sweep.report_md, sweep.report_html
    markdown.write_text(sweep_markdown(rows, linked), encoding="utf-8")
    page.write_text(sweep_html(rows, linked), encoding="utf-8")
    files = {"report_md": markdown, "report_html": page, **figures}
    for path in files.values():
        publish(path)
    return files


def _feasible(row: Mapping[str, Any]) -> bool:
    return row.get("feasible", True) is not False  # rows of sweeps without constraints have no column


def _draw_front(ax: Axes, rows: Sequence[Mapping[str, Any]], front: Front, best_id: str | None) -> None:
    groups: dict[tuple[str, bool], list[int]] = {}
    for i in front.points:
        groups.setdefault((str(rows[i].get("status")), _feasible(rows[i])), []).append(i)
    for (status, feasible), indices in groups.items():
        marker, color = STATUS_STYLE.get(status, ("o", "tab:gray"))
        bars = [i for i in indices if front.y in SE_OF and is_finite(rows[i].get(SE_OF[front.y]))]
        if bars:  # the 95 % interval of each trial's value over the evaluation's examples
            ax.errorbar(
                [float(rows[i][front.x]) for i in bars], [float(rows[i][front.y]) for i in bars],
                yerr=[Z95 * float(rows[i][SE_OF[front.y]]) for i in bars],
                fmt="none", ecolor=color, elinewidth=1, capsize=2, alpha=0.6, zorder=2,
            )  # fmt: skip
        ax.scatter(
            [float(rows[i][front.x]) for i in indices], [float(rows[i][front.y]) for i in indices],
            marker=marker, s=36, edgecolors=color, facecolors=color if feasible else "none", zorder=3,
        )  # fmt: skip
    for i in front.points:
        point = (float(rows[i][front.x]), float(rows[i][front.y]))
        ax.annotate(
            short_id(rows[i]["trial_id"]), point, xytext=(4, 3), textcoords="offset points", fontsize=7
        )
        if rows[i]["trial_id"] == best_id:
            ax.scatter(*point, marker="*", s=240, c="gold", edgecolors="black", zorder=4)
        if rows[i].get("control"):
            ax.scatter(*point, marker="D", s=130, facecolors="none", edgecolors="black", zorder=4)
    xs, ys = zip(
        *sorted((float(rows[i][front.x]), float(rows[i][front.y])) for i in front.front), strict=True
    )
    # the boundary of the dominated region: flat until the next front point along x
    ax.step(xs, ys, where="post" if front.x_mode == "min" else "pre", color="black", linewidth=1, zorder=2)
    log_scale_if_wide(ax, front.x, [float(rows[i][front.x]) for i in front.points], "x")
    log_scale_if_wide(ax, front.y, [float(rows[i][front.y]) for i in front.points], "y")
    ax.set_xlabel(f"{front.label(front.x)} {ARROWS[front.x_mode]}")
    ax.set_ylabel(f"{front.label(front.y)} {ARROWS[front.y_mode]}")
    ax.set_title(
        f"{len(front.front)} on the front; {len(front.points)} trial(s) with both values", fontsize=9
    )


def _counts(rows: Sequence[Mapping[str, Any]]) -> str:
    counts = ", ".join(f"{sum(r.get('status') == s for r in rows)} {s}" for s in STATUS_STYLE)
    return f"{len(rows)} trial(s): {counts}"


def _no_best(rows: Sequence[Mapping[str, Any]], constraints: Sequence[str]) -> tuple[str, str]:
    if constraints and any(r.get("status") == "completed" for r in rows):
        return "No completed trial satisfies the constraints", "no best policy was chosen."
    return "No trial completed", "no best policy was chosen."


def _front_tables(
    rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None
) -> list[tuple[str, list[str], list[list[str]]]]:
    """Caption, header and cells of each default front, in order of its second metric."""
    tables = []
    for f in pareto_fronts(rows):
        caption = (
            f"{f.label(f.y)} {ARROWS[f.y_mode]} vs {f.label(f.x)} {ARROWS[f.x_mode]}: "
            f"{len(f.front)} of {len(f.points)} trial(s) on the front"
        )
        cells = [
            [
                _trial_cell(rows[i], best) + ("" if _feasible(rows[i]) else " (infeasible)"),
                str(rows[i].get("status", "")),
                format_value(rows[i][f.y], _digits(f.y)),
                format_value(rows[i][f.x], _digits(f.x)),
            ]
            for i in sorted(f.front, key=lambda i: float(rows[i][f.x]))
        ]
        tables.append((caption, ["trial", "status", f.label(f.y), f.label(f.x)], cells))
    return tables


def _trials_table(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], best: Mapping[str, Any] | None
) -> tuple[list[str], list[list[str]]]:
    metric_columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    if len({r.get(SEED_KEY) for r in rows}) > 1:  # --seeds
        keys = [*keys, SEED_KEY]
    constrained = not all(_feasible(r) for r in rows)
    header = ["trial", "status", *(["feasible"] if constrained else []), *keys]
    header += [h for _, h, _ in metric_columns]
    cells = [
        [
            _trial_cell(r, best),
            str(r.get("status", "")),
            *(["yes" if _feasible(r) else "no"] if constrained else []),
            *(_value(r.get(k)) for k in keys),
            *(format_value(r.get(key), digits) for key, _, digits in metric_columns),
        ]
        for r in rows
    ]
    return header, cells


def _trial_cell(row: Mapping[str, Any], best: Mapping[str, Any] | None) -> str:
    is_best = best is not None and row["trial_id"] == best["trial_id"]
    return (
        str(row["trial_id"]) + (" (control)" if row.get("control") else "") + (" (best)" if is_best else "")
    )


def _md_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in cells]


def _html_table(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _digits(key: str) -> int:
    return NAMES.get(key.partition("/")[2], ("", 3))[1]


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
