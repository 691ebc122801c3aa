"""A sweep's trials against its control (the base config's own values of the swept keys, the row marked
``control``): each trial's differences from the control (:func:`with_control_deltas`), the report's
sentence about it, and the configurations over their PPO seeds: the trials of one configuration (the same
swept values, ``run.seed`` apart) aggregated as rliable does (:mod:`pipeline.evaluation.aggregate`): the
interquartile mean of a metric with its 95 % stratified-bootstrap interval, the difference of IQMs from the
control's with its interval, and the probability that a seed of the configuration beats a seed of the
control. Rows are ``trials.parquet`` records; only completed trials with the metric count."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.config.search_space import SEED_KEY
from pipeline.evaluation.aggregate import Interval, iqm, probability_of_improvement, stratified_bootstrap
from pipeline.evaluation.pareto import is_finite
from pipeline.evaluation.report import format_value

N_RESAMPLES = 2000

SEEDS_NOTE = (
    "Each configuration's completed seeds (Emp-F1 on the evaluation split): interquartile mean with its 95 % "
    "stratified-bootstrap interval, its difference from the control's and the probability that one of its "
    "seeds beats one of the control's (0.5: no better); a gain whose interval holds 0 is not one."
)

FEW_SEEDS = 5
"""Below this many seeds per configuration the report says its intervals over seeds are coarse."""


def seeds_note(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str = "eval/emp_f1") -> str:
    """:data:`SEEDS_NOTE`, and a warning when some configuration has fewer than :data:`FEW_SEEDS` scored
    seeds: a bootstrap over n runs draws few distinct resamples, and P(beats control) of n against m seeds
    can only be a multiple of 1/(n·m)."""
    seeds = [len(scored) for scored in _scores(_configurations(rows, keys), metric).values() if scored]
    if not seeds or min(seeds) >= FEW_SEEDS:
        return SEEDS_NOTE
    fewest = min(seeds)
    return (
        f"{SEEDS_NOTE} With {fewest} seed{'s' if fewest > 1 else ''} for some configuration these intervals "
        f"are coarse (few distinct resamples; P(beats control) moves in steps of 1/(seeds × control's seeds)) "
        f"and say little about seed-to-seed spread: only the confirmation on held-out examples decides best/, "
        f"and {FEW_SEEDS} or more seeds make this table worth reading."
    )


VS_CONTROL: tuple[tuple[str, str, bool], ...] = (
    ("vs_control/emp_f1", "eval/emp_f1", False),
    ("vs_control/dev_emp_f1", "dev/emp_f1", False),
    ("vs_control/perplexity_pct", "eval/perplexity", True),
)
"""Each trial against the sweep's control: (row key, metric, as a percentage of the control's value)."""


def with_control_deltas(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with the :data:`VS_CONTROL` differences of each trial from the control (the row marked
    ``control``; NaN where either value is missing); unchanged when the sweep has no control."""
    control = next((r for r in rows if r.get("control")), None)
    if control is None:
        return [dict(r) for r in rows]
    out = []
    for row in rows:
        new = dict(row)
        for key, metric, relative in VS_CONTROL:
            value: Any = row.get(metric)
            base: Any = control.get(metric)
            if not (is_finite(value) and is_finite(base)) or (relative and not base):
                new[key] = math.nan
            elif relative:
                new[key] = 100.0 * (value - base) / base
            else:
                new[key] = value - base
        out.append(new)
    return out


def control_sentence(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], best: Mapping[str, Any] | None
) -> str:
    """What the report says of the control: its values and Emp-F1, and the best trial against it."""
    control = next((r for r in rows if r.get("control")), None)
    if control is None:
        return "No control trial: gains cannot be stated against the base config."
    swept = ", ".join(f"{k}={_shown(control.get(k))}" for k in keys)
    text = (
        f"Control: {control['trial_id']} (the base config's own values: {swept}), {control.get('status')}, "
        f"Emp-F1 {format_value(control.get('eval/emp_f1'), 2)}, dev Emp-F1 {format_value(control.get('dev/emp_f1'), 2)}."
    )
    if best is not None and best.get("trial_id") != control["trial_id"]:
        text += (
            f" Best trial against it: Emp-F1 {_signed(best.get('vs_control/emp_f1'), 2)}, dev Emp-F1 "
            f"{_signed(best.get('vs_control/dev_emp_f1'), 2)}, perplexity {_signed(best.get('vs_control/perplexity_pct'), 1)} %"
            " (one run each: see the trials' spread before trusting a difference)."
        )
    elif best is not None:
        text += " The control is the best trial: no configuration beat it."
    return text


def _signed(value: Any, digits: int) -> str:
    return f"{float(value):+.{digits}f}" if is_finite(value) else "n/a"


def configuration_of(row: Mapping[str, Any], keys: Sequence[str]) -> tuple[Any, ...]:
    """The configuration a trial ran: its swept values (``run.seed`` excluded) and whether it is the control
    (a random sample equal to the control's values is another configuration)."""
    return (bool(row.get("control")), *(_hashable(row.get(k)) for k in keys if k != SEED_KEY))


def configuration_rows(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str = "eval/emp_f1"
) -> list[dict[str, Any]]:
    """One row per configuration, in order of first trial: its swept values, ``control``, ``seeds``
    (completed trials with ``metric``), ``trials``, ``iqm`` with ``iqm_low``/``iqm_high``, and against the
    control's seeds ``vs_control`` (difference of IQMs) with ``vs_control_low``/``_high`` and
    ``p_improvement`` with ``p_improvement_low``/``_high`` (NaN where there is no control, or no scores)."""
    groups = _configurations(rows, keys)
    scores = _scores(groups, metric)
    control = next((scores[c] for c in groups if c[0]), [])
    out: list[dict[str, Any]] = []
    for config, members in groups.items():
        first = members[0]
        mine = scores[config]
        row: dict[str, Any] = {
            "control": config[0],
            **{k: first.get(k) for k in keys if k != SEED_KEY},
            "seeds": len(mine),
            "trials": len(members),
            "trial_ids": ", ".join(str(r.get("trial_id")) for r in members),
            "trial_s": sum(float(r["wall_s"]) for r in members if is_finite(r.get("wall_s"))),
            "metric": metric,
        }
        row.update(_interval("iqm", mine and stratified_bootstrap(iqm, mine, n_resamples=N_RESAMPLES)))
        gap: Interval | None = None
        better: Interval | None = None
        if mine and control:
            gap = stratified_bootstrap(lambda x, y: iqm(x) - iqm(y), mine, control, n_resamples=N_RESAMPLES)
            better = stratified_bootstrap(probability_of_improvement, mine, control, n_resamples=N_RESAMPLES)
        row.update(_interval("vs_control", gap))
        row.update(_interval("p_improvement", better))
        out.append(row)
    return out


def seeds_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """The report's table of :func:`configuration_rows`: header and cells."""
    swept = [k for k in keys if k != SEED_KEY]
    header = ["configuration", *swept, "seeds", "Emp-F1 IQM [95 % CI]", "Δ IQM vs control [95 % CI]",
              "P(beats control) [95 % CI]", "compute (trial-s)"]  # fmt: skip
    cells = [
        [
            "control" if c["control"] else c["trial_ids"].split(", ")[0] + " …",
            *(_shown(c.get(k)) for k in swept),
            f"{c['seeds']} of {c['trials']}",
            _ranged(c, "iqm", 2, signed=False),
            "—" if c["control"] else _ranged(c, "vs_control", 2, signed=True),
            "—" if c["control"] else _ranged(c, "p_improvement", 2, signed=False),
            f"{c['trial_s']:.0f}",
        ]
        for c in configuration_rows(rows, keys)
    ]
    return header, cells


def _ranged(row: Mapping[str, Any], name: str, digits: int, *, signed: bool) -> str:
    value, low, high = row.get(name), row.get(f"{name}_low"), row.get(f"{name}_high")
    if not is_finite(value):
        return "n/a"
    form = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{form.format(value)} [{form.format(low)}, {form.format(high)}]"


def _configurations(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> dict[tuple[Any, ...], list[Mapping[str, Any]]]:
    """The trials of each configuration (:func:`configuration_of`), in order of first trial."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for trial in rows:
        groups.setdefault(configuration_of(trial, keys), []).append(trial)
    return groups


def _scores(
    groups: Mapping[tuple[Any, ...], Sequence[Mapping[str, Any]]], metric: str
) -> dict[tuple[Any, ...], list[float]]:
    """Each configuration's ``metric`` over its completed seeds that have one."""
    return {
        config: [
            float(r[metric]) for r in members if r.get("status") == "completed" and is_finite(r.get(metric))
        ]
        for config, members in groups.items()
    }


def has_seeds(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> bool:
    """Whether some configuration ran with more than one seed."""
    return any(len(members) > 1 for members in _configurations(rows, keys).values())


def _interval(name: str, interval: Any) -> dict[str, float]:
    if not interval:
        return {name: math.nan, f"{name}_low": math.nan, f"{name}_high": math.nan}
    return {name: interval.estimate, f"{name}_low": interval.low, f"{name}_high": interval.high}


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def confirmation_section(
    confirmation: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> tuple[str, str, list[str], list[list[str]]]:
    """The report's confirmation: its note, its verdict, and the table (header and cells) of every
    confirmed configuration against the control. ``confirmation`` holds ``split``, ``n_examples``,
    ``control_id`` (and ``control_trials``, the control's seeds), ``best_id``, ``rule``, ``n_resamples`` and
    ``rows`` (``trial_id``: the configuration's name, ``trials``: its seeds' trials, ``confirm/*`` values)."""
    c = confirmation
    by_id = {str(r.get("trial_id")): r for r in rows}
    swept = [k for k in keys if k != SEED_KEY]
    controls = list(c.get("control_trials") or [c["control_id"]])
    note = (
        f"{c['n_examples']} examples of {c['split']} the search never used (no dev slice, no trial's final "
        f"evaluation); each configuration against the control ({_seeds_of(controls)}) on the same examples, "
        f"paired bootstrap with {c['n_resamples']} resamples over examples, 95 % intervals; a configuration "
        f"with several seeds is scored by their mean on each resample. Rule for best/: {c['rule']}."
    )
    confirmed = list(c["rows"])

    def gain(r: Mapping[str, Any]) -> str:
        return (
            f"Emp-F1 {_ranged(r, 'confirm/emp_f1', 2, signed=True)} over the control at "
            f"{_signed(r.get('confirm/perplexity_pct'), 1)} % perplexity"
        )

    def trials(r: Mapping[str, Any]) -> list[str]:
        return [str(t) for t in r.get("trials") or [r["trial_id"]]]

    def values(r: Mapping[str, Any]) -> Mapping[str, Any]:
        return by_id.get(trials(r)[0], {})

    if c["best_id"] != c["control_id"]:
        best = next(r for r in confirmed if str(c["best_id"]) in trials(r))
        shown = ", ".join(f"{k}={_shown(values(best).get(k))}" for k in swept)
        seeds = f"; its {_seeds_of(trials(best))}" if len(trials(best)) > 1 else ""
        verdict = f"best/ = {c['best_id']} ({shown}{seeds}): {gain(best)}."
    elif confirmed:
        closest = max(
            confirmed,
            key=lambda r: float(r["confirm/emp_f1"]) if is_finite(r["confirm/emp_f1"]) else -math.inf,
        )
        verdict = (
            f"No configuration beat the control under the rule: best/ is the control {c['control_id']}. "
            f"Closest: {closest['trial_id']}, {gain(closest)}."
        )
    else:
        verdict = f"No configuration completed to confirm: best/ is the control {c['control_id']}."
    header = ["configuration", *swept, "seeds", "Δ Emp-F1 [95 % CI]", "Δ ER F1", "Δ IP F1", "Δ EX F1",
              "Δ ppl %", "Δ Dist-2", "passes"]  # fmt: skip
    cells = [
        [
            str(r["trial_id"]) + (" (best)" if str(c["best_id"]) in trials(r) else ""),
            *(_shown(values(r).get(k)) for k in swept),
            str(len(trials(r))),
            _ranged(r, "confirm/emp_f1", 2, signed=True),
            *(_signed(r.get(f"confirm/{m}_f1"), 2) for m in ("er", "ip", "ex")),
            _signed(r.get("confirm/perplexity_pct"), 1),
            _signed(r.get("confirm/dist2"), 4),
            "yes" if r.get("confirm/passes") else "no",
        ]
        for r in confirmed
    ]
    return note, verdict, header, cells


def _seeds_of(trials: Sequence[str]) -> str:
    return f"trial {trials[0]}" if len(trials) == 1 else f"{len(trials)} seeds: trials {', '.join(trials)}"


def dev_pilot_sentence(pilot: Mapping[str, Any] | None, dev_examples: int | None = None) -> str:
    """What the report says of the dev slice's size: the pilot's measurement and choice, or the given size."""
    if not pilot:
        return (
            f"Dev slice: {dev_examples} examples (given; no pilot measured its noise)."
            if dev_examples
            else ""
        )
    measured = ", ".join(f"{_shown(float(v))} at {k}" for k, v in pilot["std_error"].items())
    return (
        f"Dev slice: {pilot['chosen']} examples, {pilot['reason']}. Pilot: {pilot['policy']} answered "
        f"{pilot['examples']} search rows (Emp-F1 {pilot['emp_f1']:.2f}); standard error of one dev report by "
        f"slice size: {measured}."
    )


ASHA_NOTE = (
    "Every report that reached one of ASHA's rungs, against the rung's cut-off (the value that keeps the top "
    "1/reduction-factor of the reports there before it) and the report's own standard error: a margin within "
    "about 2 standard errors of 0 is a coin flip, not a ranking."
)


def asha_table(decisions: Sequence[Mapping[str, Any]], mode: str) -> tuple[list[str], list[list[str]]]:
    """The report's table of ASHA's comparisons (``asha.jsonl`` records): header and cells."""
    header = ["trial", "report", "value", "rung cut-off", "margin", "margin / SE", "decision"]
    cells = []
    for d in decisions:
        value: Any = d.get("value")
        cutoff: Any = d.get("cutoff")
        se: Any = d.get("se")
        margin = (
            (value - cutoff) * (1 if mode == "max" else -1)
            if is_finite(value) and is_finite(cutoff)
            else None
        )
        cells.append([
            str(d["trial_id"]) + (" (control)" if d.get("control") else ""), str(d.get("report")),
            format_value(value, 2), "first at the rung" if cutoff is None else format_value(cutoff, 2),
            "—" if margin is None else _signed(margin, 2),
            "—" if margin is None or not is_finite(se) or not se else f"{margin / se:+.1f}",
            str(d.get("decision")),
        ])  # fmt: skip
    return header, cells
