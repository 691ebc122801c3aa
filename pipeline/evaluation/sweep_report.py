"""A sweep's ``report.md``: one row per trial (swept values, final metrics, status) and the best trial
with the command that reproduces it. Rows are the ``trials.parquet`` records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.evaluation.report import format_value

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("eval/emp_f1", "Emp-F1", 2),
    ("eval/er_f1", "ER F1", 2),
    ("eval/ip_f1", "IP F1", 2),
    ("eval/ex_f1", "EX F1", 2),
    ("eval/perplexity", "ppl", 2),
    ("eval/dist2", "Dist-2", 4),
    ("dev/emp_f1", "dev Emp-F1", 2),
    ("rollout/kl", "KL", 3),
    ("reward/score", "reward", 3),
    ("iteration", "iterations", 0),
    ("wall_s", "wall s", 1),
)
"""Metric columns of the table: (row key, header, decimals)."""


def sweep_markdown(
    rows: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str],
    metric: str,
    mode: str,
    best: Mapping[str, Any] | None,
    command: str | None,
    title: str = "Sweep",
) -> str:
    """The Markdown report of ``rows`` (each with ``trial_id``, ``status``, the swept ``keys`` and the
    :data:`COLUMNS` metrics); ``best`` is the chosen row and ``command`` reproduces it."""
    lines = [f"# {title}", "", f"{len(rows)} trial(s); best by `{metric}` ({mode}).", ""]
    if best is not None:
        swept = ", ".join(f"`{k}={_value(best.get(k))}`" for k in keys)
        lines += [
            f"**Best trial:** `{best['trial_id']}` ({swept}): `{metric}` = {format_value(best.get(metric), 3)}.",
            "",
        ]
        if command:
            lines += ["Reproduce it:", "", "```bash", command, "```", ""]
    else:
        lines += ["**No trial completed**: no best policy was chosen.", ""]
    metric_columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    header = ["trial", "status", *keys, *(h for _, h, _ in metric_columns)]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in rows:
        cells = [
            str(r["trial_id"])
            + (" (best)" if best is not None and r["trial_id"] == best["trial_id"] else ""),
            str(r.get("status", "")),
            *(_value(r.get(k)) for k in keys),
            *(format_value(r.get(key), digits) for key, _, digits in metric_columns),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
