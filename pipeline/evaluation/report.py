"""The evaluation report: ``report.md`` and a self-contained ``report.html`` with PNGs in ``figures/``.

Built from the metrics dict of :func:`pipeline.evaluation.evaluate`, the first rows of the
responses table and, when present, the run's SFT and PPO training logs. The HTML needs no server:
styles are inline and figures are relative links to ``figures/*.png``. When the folders mirror URIs
(a run in a bucket), the training logs are fetched before they are read and the report is published
(figures first, so a published report never links a figure that is not there).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pipeline import storage
from pipeline.config import MECHANISMS
from pipeline.evaluation.figures import (
    confusion_figure,
    differences_figure,
    level_distribution_figure,
    ppo_curves_figure,
    sft_curves_figure,
)
from pipeline.evaluation.suite import GOLD_METRICS, METRICS
from pipeline.layout import EvaluationDir, PPODir, RunLayout

logger = logging.getLogger(__name__)

ARROWS = {"higher": " ↑", "lower": " ↓", None: ""}


@dataclass(frozen=True)
class ReportFigure:
    """A figure of the report: path relative to the report and its caption."""

    path: str
    caption: str


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`build_report` wrote."""

    markdown: Path
    html: Path
    figures: tuple[Path, ...]


def format_value(value: Any, digits: int) -> str:
    """A table cell: ``value`` with ``digits`` decimals, ``n/a`` for a missing or non-finite number."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def format_difference(result: Mapping[str, Any] | None, digits: int) -> str:
    """``+d [low, high]`` of a bootstrap result, ``n/a`` when there is none."""
    if not result:
        return "n/a"
    d, lo, hi = (result[k] for k in ("difference", "ci_low", "ci_high"))
    return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def metrics_table(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the metrics table: one row per :data:`~pipeline.evaluation.METRICS` entry.

    Columns: metric, each policy, gold (where the metric describes text alone), then per
    comparison the difference with its CI and the bootstrap p-value.
    """
    policies = {name: metrics["policies"][name] for name in policy_names(metrics)}
    comparisons = metrics.get("comparisons", [])
    alpha = float(metrics.get("bootstrap", {}).get("alpha", 0.05))
    header = ["metric", *policies, "gold"]
    for c in comparisons:
        header += [f"{c['policy']} − {c['baseline']} [{100 * (1 - alpha):.0f}% CI]", "p"]
    rows = []
    for spec in METRICS:
        row = [spec.label + ARROWS[spec.better]]
        row += [format_value(p.get(spec.key), spec.digits) for p in policies.values()]
        row.append(
            format_value(metrics["gold"].get(spec.key), spec.digits) if spec.key in GOLD_METRICS else ""
        )
        for c in comparisons:
            result = c["metrics"].get(spec.key)
            row += [format_difference(result, spec.digits), format_value(result and result["p_value"], 3)]
        rows.append(row)
    return header, rows


def policy_names(metrics: Mapping[str, Any]) -> list[str]:
    """Policy names in evaluation order (``policy_order``; the baseline first)."""
    order = [n for n in metrics.get("policy_order", []) if n in metrics["policies"]]
    return order + [n for n in metrics["policies"] if n not in order]


def draw_figures(metrics: Mapping[str, Any], out: EvaluationDir, run: RunLayout | None) -> list[ReportFigure]:
    """Every PNG of the report into ``out.figures``; training curves only when their logs exist."""
    fig_dir = out.figures
    figures: list[ReportFigure] = []

    def add(path: Path | None, caption: str) -> None:
        if path is not None:
            figures.append(ReportFigure(path.relative_to(out.path).as_posix(), caption))

    labels = {s.key: s.label for s in METRICS}
    for k, c in enumerate(metrics.get("comparisons", [])):
        add(
            differences_figure(c, labels, fig_dir / f"differences_{k}.png"),
            f"{c['policy']} − {c['baseline']}: observed differences and paired bootstrap CIs "
            "(green: CI above 0, red: below 0).",
        )
    policies = {name: metrics["policies"][name] for name in policy_names(metrics)}
    add(
        level_distribution_figure(
            metrics["gold"]["level_distribution"],
            {
                n: {m: d["pred_distribution"] for m, d in p["per_mechanism"].items()}
                for n, p in policies.items()
            },
            fig_dir / "level_distribution.png",
        ),
        "Fraction of responses at each empathy level: gold responses vs each policy's generated ones.",
    )
    for name, p in policies.items():
        add(
            confusion_figure(
                p["per_mechanism"], f"{name}: gold vs predicted levels", fig_dir / f"confusion_{name}.png"
            ),
            f"{name}: confusion matrices (rows gold level, columns identifier level of the generated response).",
        )
    if run is not None:
        history = _sft_history(run.sft.metrics)
        if history:
            add(
                sft_curves_figure(history, fig_dir / "sft_curves.png"),
                "SFT: loss and validation perplexity per epoch.",
            )
        rows = _ppo_rows(run.ppo)
        if rows:
            add(
                ppo_curves_figure(rows, fig_dir / "ppo_curves.png"),
                "PPO: reward, KL, losses and throughput per iteration.",
            )
    return figures


def build_report(
    metrics: Mapping[str, Any],
    out: EvaluationDir,
    *,
    examples: Sequence[Mapping[str, Any]] = (),
    run: RunLayout | None = None,
    title: str = "EmpRL evaluation",
) -> ReportFiles:
    """Write the Markdown and HTML reports and their figures into ``out``.

    ``examples`` are rows of the responses table (``context``, ``gold_response``, ``gold_<m>_level``,
    ``<policy>_response``, ``<policy>_<m>_level``), shown side by side; ``run`` supplies the
    training curves (the SFT metrics history and the PPO log), skipped when absent.
    """
    out.path.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(metrics, out, run)
    header, rows = metrics_table(metrics)
    policies = policy_names(metrics)
    info = _info(metrics, run)
    content = _Page(title, info, header, rows, figures, examples, policies)
    markdown, page = _markdown(content), _html(content)
    md_path, html_path = out.report_md, out.report_html
    md_path.write_text(markdown)
    html_path.write_text(page)
    if out.figures.is_dir():
        storage.publish(out.figures)
    storage.publish(md_path)
    storage.publish(html_path)
    logger.info("report written: %s (%d figures)", storage.display(html_path), len(figures))
    return ReportFiles(md_path, html_path, tuple(out.path / f.path for f in figures))


def _info(metrics: Mapping[str, Any], run: RunLayout | None) -> list[tuple[str, str]]:
    boot = metrics.get("bootstrap", {})
    items = [
        ("split", f"{metrics['split']} ({metrics['n_examples']} examples)"),
        ("decoding", json.dumps(metrics.get("decoding", {}))),
        *((f"policy {n}", str(metrics["policies"][n].get("folder", ""))) for n in policy_names(metrics)),
        ("bootstrap", f"{boot.get('n_resamples')} paired resamples, seed {boot.get('seed')}"),
        ("generated", dt.datetime.now().isoformat(timespec="seconds")),
    ]
    if run is not None:
        items.insert(0, ("run", storage.display(run.root)))
    return items


NOTES = (
    "Emp-F1: mean over ER/IP/EX of the weighted F1 (×100) between the identifiers' levels of the "
    "generated responses and the gold levels (EmpRL). Perplexity: teacher-forced token perplexity of "
    "the gold responses under the policy. Dist-n: corpus-level distinct n-grams / n-grams. BLEU-n: "
    "cumulative corpus BLEU (sacrebleu, 13a, lowercased). ROUGE-L: mean sentence-level F1. Length: "
    "13a tokens. Differences are policy − baseline with paired bootstrap percentile CIs; p is the "
    "fraction of resamples in which the sign of the difference does not hold."
)


def _levels(row: Mapping[str, Any], prefix: str) -> str:
    values = [row.get(f"{prefix}_{m.lower()}_level") for m in MECHANISMS]
    return "/".join("?" if v is None else str(v) for v in values)


def _turns(context: str) -> list[str]:
    return [t.strip() for t in context.split("</s>") if t.strip()] or [context]


def _sample_rows(row: Mapping[str, Any], policies: Sequence[str]) -> list[tuple[str, str, str]]:
    """(who, levels ER/IP/EX, text) for the gold response and each policy's response."""
    out = [("gold", _levels(row, "gold"), str(row.get("gold_response", "")))]
    out += [(p, _levels(row, p), str(row.get(f"{p}_response", ""))) for p in policies]
    return out


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def figures_markdown(figures: Sequence[ReportFigure]) -> list[str]:
    """Markdown lines showing each figure with its caption below."""
    return [line for f in figures for line in (f"![{f.caption}]({f.path})", "", f"*{f.caption}*", "")]


def figures_html(figures: Sequence[ReportFigure]) -> list[str]:
    """One ``<figure>`` element per figure, with its caption."""
    e = html.escape
    return [
        f'<figure><img src="{e(f.path)}" alt="{e(f.caption)}"><figcaption>{e(f.caption)}</figcaption></figure>'
        for f in figures
    ]


class _Page(NamedTuple):
    """What the Markdown and the HTML report both show."""

    title: str
    info: list[tuple[str, str]]
    header: list[str]
    rows: list[list[str]]
    figures: list[ReportFigure]
    examples: Sequence[Mapping[str, Any]]
    policies: Sequence[str]


def _markdown(page: _Page) -> str:
    title, info, header, rows, figures, examples, policies = page
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {md_cell(v)}" for k, v in info]
    lines += ["", "## Metrics", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    lines += ["", NOTES, "", "## Figures", "", *figures_markdown(figures)]
    if examples:
        lines += ["## Sample responses", "", "Levels are ER/IP/EX (0 none, 1 weak, 2 strong).", ""]
        for i, row in enumerate(examples):
            lines += [
                f"### Example {i + 1}",
                "",
                "> " + "<br>".join(md_cell(t) for t in _turns(str(row["context"]))),
            ]
            lines += ["", "| | levels | response |", "|---|---|---|"]
            lines += [f"| {who} | {lv} | {md_cell(text)} |" for who, lv, text in _sample_rows(row, policies)]
            lines.append("")
    return "\n".join(lines) + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th:first-child, td:first-child, table.samples td { text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: 0.9em; }
.context { background: #f7f7f7; padding: 0.5em 1em; border-left: 3px solid #bbb; }
"""


def _html(page: _Page) -> str:
    e = html.escape
    title, info, header, rows, figures, examples, policies = page
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in info) + "</ul>",
        '<h2>Metrics</h2><table id="metrics"><thead><tr>',
        "".join(f"<th>{e(h)}</th>" for h in header),
        "</tr></thead><tbody>",
    ]
    parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
    parts += [
        "</tbody></table>",
        f'<p class="note">{e(NOTES)}</p>',
        "<h2>Figures</h2>",
        *figures_html(figures),
    ]
    if examples:
        parts.append(
            '<h2>Sample responses</h2><p class="note">Levels are ER/IP/EX (0 none, 1 weak, 2 strong).</p>'
        )
        for i, row in enumerate(examples):
            turns = "<br>".join(e(t) for t in _turns(str(row["context"])))
            parts += [f"<h3>Example {i + 1}</h3>", f'<div class="context">{turns}</div>']
            parts.append('<table class="samples"><tr><th></th><th>levels</th><th>response</th></tr>')
            parts += [
                f"<tr><td><b>{e(who)}</b></td><td>{e(lv)}</td><td>{e(text)}</td></tr>"
                for who, lv, text in _sample_rows(row, policies)
            ]
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _sft_history(path: Path) -> list[dict[str, Any]]:
    if not storage.fetch(path).is_file():
        logger.info("no SFT log at %s: the report has no SFT curves", path)
        return []
    history = json.loads(path.read_text()).get("history", [])
    return [h for h in history if isinstance(h, dict)]


def _ppo_rows(ppo: PPODir) -> list[dict[str, Any]]:
    if storage.fetch(ppo.log).is_file():
        return [json.loads(line) for line in ppo.log.read_text().splitlines() if line.strip()]
    if storage.fetch(ppo.metrics).is_file():
        return [h for h in json.loads(ppo.metrics.read_text()).get("history", []) if isinstance(h, dict)]
    logger.info("no PPO log in %s: the report has no PPO curves", ppo.path)
    return []
