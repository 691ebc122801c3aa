"""PNG figures of the evaluation report and of a sweep's learning curves, drawn with matplotlib's object API
on the Agg canvas.

No pyplot and no global state: each function builds one ``Figure``, saves it and returns the path,
so figures can be drawn from any thread or worker. Inputs are plain values from ``metrics.json``
and the training logs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from pipeline.evaluation.pareto import is_finite, metric_label

LEVEL_NAMES = ("none", "weak", "strong")
"""EPITOME levels 0, 1, 2."""

DPI = 110

PPO_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("score (reward)", ("reward/score",)),
    ("gold-level hit rate", ("reward/ER_hit", "reward/IP_hit", "reward/EX_hit")),
    ("gold-level probability", ("reward/ER_gold_prob", "reward/IP_gold_prob", "reward/EX_gold_prob")),
    ("KL to reference", ("rollout/kl",)),
    ("KL coefficient", ("rollout/kl_coef",)),
    ("policy loss", ("ppo/policy_loss",)),
    ("value loss", ("ppo/value_loss",)),
    ("entropy", ("ppo/entropy",)),
    ("response length", ("rollout/response_len",)),
    ("samples / s", ("perf/samples_per_s",)),
)
"""PPO log panels: title and the ``metrics.jsonl`` keys drawn in it (absent keys are skipped)."""


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    return path


def confusion_figure(per_mechanism: Mapping[str, Mapping[str, Any]], title: str, path: Path) -> Path:
    """One heat map per mechanism: rows gold level, columns predicted level, shaded by row fraction."""
    mechanisms = list(per_mechanism)
    fig = Figure(figsize=(3.3 * len(mechanisms), 3.2))
    axes = fig.subplots(1, len(mechanisms), squeeze=False)[0]
    for ax, m in zip(axes, mechanisms, strict=True):
        counts = np.asarray(per_mechanism[m]["confusion_matrix"], dtype=np.float64)
        rows = counts.sum(axis=1, keepdims=True)
        frac = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                ax.text(
                    j, i, f"{int(counts[i, j])}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.6 else "black", fontsize=9,
                )  # fmt: skip
        ticks = list(range(counts.shape[0]))
        names = [LEVEL_NAMES[k] if k < len(LEVEL_NAMES) else str(k) for k in ticks]
        ax.set_xticks(ticks, names)
        ax.set_yticks(ticks, names)
        ax.set_xlabel("predicted level (generated)")
        ax.set_title(f"{m}: weighted F1 {per_mechanism[m]['weighted_f1']:.1f}", fontsize=10)
    axes[0].set_ylabel("gold level")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def level_distribution_figure(
    gold: Mapping[str, Sequence[float]], policies: Mapping[str, Mapping[str, Sequence[float]]], path: Path
) -> Path:
    """Grouped bars per mechanism: the fraction of responses at each level, gold then each policy."""
    mechanisms = list(gold)
    series = {"gold": gold, **policies}
    fig = Figure(figsize=(3.6 * len(mechanisms), 3.2))
    axes = fig.subplots(1, len(mechanisms), squeeze=False, sharey=True)[0]
    width = 0.8 / len(series)
    x = np.arange(len(LEVEL_NAMES))
    for ax, m in zip(axes, mechanisms, strict=True):
        for k, (name, dists) in enumerate(series.items()):
            ax.bar(x + (k - (len(series) - 1) / 2) * width, dists[m], width, label=name)
        ax.set_xticks(x, LEVEL_NAMES)
        ax.set_title(m)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("fraction of responses")
    axes[-1].legend(fontsize=8)
    fig.suptitle("Empathy level distribution: gold vs generated")
    fig.tight_layout()
    return save_figure(fig, path)


def differences_figure(comparison: Mapping[str, Any], labels: Mapping[str, str], path: Path) -> Path:
    """One small panel per metric: the observed difference (policy − baseline) and its bootstrap CI."""
    results = comparison["metrics"]
    keys = [k for k in labels if k in results]
    cols = 4
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(3.0 * cols, 1.1 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        r = results[key]
        color = "tab:green" if r["ci_low"] > 0 else "tab:red" if r["ci_high"] < 0 else "tab:gray"
        # the interval as its own segment: a percentile interval need not contain the observed
        # difference (e.g. Dist-n, which resampling with repeats biases downwards)
        ax.hlines(0, r["ci_low"], r["ci_high"], color=color, linewidth=2)
        ax.vlines([r["ci_low"], r["ci_high"]], -0.15, 0.15, color=color, linewidth=1.5)
        ax.plot([r["difference"]], [0], "o", color=color)
        ax.set_ylim(-0.5, 0.5)
        ax.axvline(0.0, color="black", linewidth=0.8)
        span = max(abs(r["ci_low"]), abs(r["ci_high"]), abs(r["difference"]), 1e-9) * 1.3
        ax.set_xlim(-span, span)
        ax.set_yticks([])
        ax.set_title(labels[key], fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    level = 100 * (1 - float(next(iter(results.values()))["alpha"])) if results else 95.0
    fig.suptitle(
        f"{comparison['policy']} − {comparison['baseline']}: difference and {level:.0f}% bootstrap CI"
    )
    fig.tight_layout()
    return save_figure(fig, path)


def sft_curves_figure(history: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Train and validation loss, and validation perplexity, per SFT epoch; ``None`` without history."""
    rows = [h for h in history if "epoch" in h]
    if not rows:
        return None
    epochs = [h["epoch"] for h in rows]
    fig = Figure(figsize=(9, 3.2))
    loss_ax, ppl_ax = fig.subplots(1, 2)
    for key in ("train_loss", "val_loss"):
        points = [(e, h[key]) for e, h in zip(epochs, rows, strict=True) if is_finite(h.get(key))]
        if points:
            loss_ax.plot(*zip(*points, strict=True), marker="o", label=key)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("token NLL")
    loss_ax.legend(fontsize=8)
    points = [(e, h["val_ppl"]) for e, h in zip(epochs, rows, strict=True) if is_finite(h.get("val_ppl"))]
    if points:
        ppl_ax.plot(*zip(*points, strict=True), marker="o", color="tab:purple")
    ppl_ax.set_xlabel("epoch")
    for ax in (loss_ax, ppl_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ppl_ax.set_ylabel("validation perplexity")
    fig.suptitle("SFT training")
    fig.tight_layout()
    return save_figure(fig, path)


def ppo_curves_figure(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """The :data:`PPO_PANELS` present in the PPO log, against the iteration; ``None`` when none is."""
    panels = [
        (title, [k for k in keys if any(is_finite(r.get(k)) for r in rows)]) for title, keys in PPO_PANELS
    ]
    panels = [(title, keys) for title, keys in panels if keys]
    if not rows or not panels:
        return None
    cols = 3
    n_rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.0 * cols, 2.6 * n_rows))
    axes = fig.subplots(n_rows, cols, squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels, strict=False):
        _plot_series(ax, rows, keys, legend=len(dict(PPO_PANELS)[title]) > 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("PPO training")
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_series(ax: Axes, rows: Sequence[Mapping[str, Any]], keys: Sequence[str], *, legend: bool) -> None:
    for key in keys:
        points = [(r.get("iteration", i + 1), r[key]) for i, r in enumerate(rows) if is_finite(r.get(key))]
        x, y = (np.asarray(v, dtype=np.float64) for v in zip(*points, strict=True))
        window = len(points) // 20
        if window < 3:
            ax.plot(x, y, marker="." if len(points) < 50 else None, label=key.split("/")[-1])
            continue
        # long runs: the raw per-iteration values faintly, a centred moving average on top
        (line,) = ax.plot(x, y, alpha=0.25, linewidth=0.8)
        smooth = np.convolve(y, np.ones(window) / window, mode="valid")
        ax.plot(
            x[window // 2 : window // 2 + len(smooth)],
            smooth,
            color=line.get_color(),
            label=key.split("/")[-1],
        )
    if legend:
        ax.legend(fontsize=7)


CURVES = ("dev/emp_f1", "rollout/kl_k3", "reward/score")
"""History metrics of the learning curves, one panel each."""


def learning_curves_figure(
    history: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[str] = CURVES,
    best_id: str | None = None,
    path: Path,
) -> Path | None:
    """One panel per metric with a value: one line per trial against the PPO iteration, the best trial's
    thicker, one legend of trial labels; ``None`` when no metric has a value."""
    trials: dict[str, list[Mapping[str, Any]]] = {}
    for h in history:
        trials.setdefault(str(h["trial_id"]), []).append(h)
    panels = [
        k for k in metrics if any(is_finite(h.get(k)) and is_finite(h.get("iteration")) for h in history)
    ]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = colormaps["tab20"]
    legend: dict[str, Line2D] = {}
    for ax, key in zip(axes, panels, strict=True):
        for k, (trial_id, reports) in enumerate(trials.items()):
            points = sorted(
                (h["iteration"], h[key])
                for h in reports
                if is_finite(h.get(key)) and is_finite(h.get("iteration"))
            )
            if not points:
                continue
            best = trial_id == best_id
            label = short_id(trial_id) + (" (best)" if best else "")
            (legend[label],) = ax.plot(
                *zip(*points, strict=True), color="black" if best else colors(k % colors.N), marker=".",
                markersize=4, linewidth=2.8 if best else 1.1, zorder=3 if best else 2, label=label,
            )  # fmt: skip
        log_scale_if_wide(ax, key, [float(h[key]) for h in history if is_finite(h.get(key))], "y")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel(metric_label(key))
    fig.legend(
        list(legend.values()), list(legend), title="trial", fontsize=7, loc="center left",
        bbox_to_anchor=(1.0, 0.5), ncol=1 + len(legend) // 25,
    )  # fmt: skip
    fig.suptitle("Learning curves")
    fig.tight_layout()
    return save_figure(fig, path)


def short_id(trial_id: Any) -> str:
    """The tail of a Tune trial id: its 5-digit counter."""
    return str(trial_id)[-5:]  # Tune ids end in the trial's 5-digit counter


def log_scale_if_wide(ax: Axes, key: str, values: Sequence[float], axis: Literal["x", "y"]) -> None:
    """A log scale on ``axis`` for a perplexity spanning more than a decade, ticked at 1-2-5."""
    if key.endswith("/perplexity") and values and min(values) > 0 and max(values) > 10 * min(values):
        scaled = ax.xaxis if axis == "x" else ax.yaxis
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        # plain numbers at 1-2-5 steps: the default 10^k labels say little over one or two decades
        scaled.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        scaled.set_major_formatter(FormatStrFormatter("%g"))
        scaled.set_minor_formatter(NullFormatter())
