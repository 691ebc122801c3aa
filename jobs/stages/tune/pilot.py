"""The dev slice's size from a pilot: before the first trial, the policy being tuned (the run's SFT policy,
where every trial's PPO starts) answers up to :data:`MAX_PILOT` search rows once; the spread of its Emp-F1
over resampled slices gives the standard error at each candidate size, and the sweep takes the smallest
slice whose paired difference of two trials would have a standard error within the target
(``--dev-se``). Two trials' reports are paired (the same examples, the same sampling random numbers), so
their difference is at most √2 times one report's standard error (independent errors): the bound used.
What was measured and chosen is saved (``dev_pilot.json``), logged, and shown in the report."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from actors.sweep.trial import DevEvaluator, dev_slice, emp_f1_std_error
from pipeline.config import Config
from pipeline.evaluation.classification import emp_f1
from pipeline.evaluation.suite import LabeledSplit
from pipeline.layout import RunLayout, SweepDir
from pipeline.storage import display, fetch, publish

logger = logging.getLogger(__name__)

SIZES = (32, 64, 128, 256, 512, 1024)
"""Candidate dev slice sizes (and the pilot's own size, when smaller than the largest)."""
MAX_PILOT = 1024
"""Rows the pilot answers at most."""


@dataclass(frozen=True)
class DevPilot:
    """The pilot's measurement and the size chosen from it."""

    policy: str
    examples: int
    """Rows the pilot answered."""
    emp_f1: float
    target: float
    """The target standard error of a paired difference of two reports (Emp-F1 points)."""
    std_error: dict[int, float]
    """Slice size -> standard error of one report's dev Emp-F1."""
    chosen: int
    reason: str

    @property
    def pair_se(self) -> float:
        """The standard error of two trials' paired difference at the chosen size (√2 × one report's)."""
        return math.sqrt(2) * self.std_error[self.chosen]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (sizes as strings)."""
        return {**asdict(self), "std_error": {str(k): v for k, v in self.std_error.items()}}


def choose(std_error: dict[int, float], target: float) -> tuple[int, str]:
    """The smallest size whose paired-difference standard error (√2 × one report's) is within ``target``,
    else the largest measured, with the reason in words."""
    sizes = sorted(std_error)
    for size in sizes:
        if math.sqrt(2) * std_error[size] <= target:
            return size, (
                f"the smallest slice whose paired difference of two reports has a standard error "
                f"<= {target:g} Emp-F1 (√2 × {std_error[size]:.2f})"
            )
    largest = sizes[-1]
    return largest, (
        f"no slice up to {largest} examples reaches a paired standard error of {target:g} Emp-F1 (at "
        f"{largest}: √2 × {std_error[largest]:.2f} = {math.sqrt(2) * std_error[largest]:.2f}): the sweep uses "
        f"{largest}, and differences between reports below about {2 * math.sqrt(2) * std_error[largest]:.1f} "
        "Emp-F1 are noise"
    )


def pilot_dev_examples(
    cfg: Config, layout: RunLayout, search: LabeledSplit, target: float, sweep: SweepDir
) -> DevPilot:
    """Measures and chooses (see the module); writes ``sweep.dev_pilot``."""
    n = min(len(search), MAX_PILOT)
    policy = layout.sft.policy
    logger.info("sweep: dev pilot: the SFT policy answers %d search rows to size the dev slice", n)
    dev = DevEvaluator(cfg, dev_slice(search, n, seed=cfg.run.seed), layout.identifiers.path)
    outputs = dev.outputs(fetch(policy))
    sizes = sorted({s for s in SIZES if s < n} | {n})
    std_error = {
        size: emp_f1_std_error(dev.split, outputs.pred_levels, size, seed=cfg.run.seed) for size in sizes
    }
    chosen, reason = choose(std_error, target)
    pilot = DevPilot(
        policy=display(policy),
        examples=n,
        emp_f1=float(emp_f1(dev.split.gold_levels, outputs.pred_levels)["emp_f1"]),
        target=target,
        std_error=std_error,
        chosen=chosen,
        reason=reason,
    )
    logger.info(
        "sweep: dev slice of %d examples: %s; standard error of one report by size: %s",
        chosen, reason, ", ".join(f"{k}: {v:.2f}" for k, v in std_error.items()),
    )  # fmt: skip
    sweep.path.mkdir(parents=True, exist_ok=True)
    sweep.dev_pilot.write_text(json.dumps(pilot.to_json(), indent=2) + "\n")
    publish(sweep.dev_pilot)
    return pilot
