"""What a sweep's newest saved Tune experiment state (what a restore reads) says of each trial, read
through ``pipeline.storage`` so that the same helper reads a local sweep folder or one in a bucket."""

from __future__ import annotations

import json

from pipeline import storage
from pipeline.layout import SweepDir


def saved_trials(sweep: SweepDir) -> dict[str, tuple[str, int]]:
    """``{trial id: (status, PPO iteration of its last result)}`` from the newest ``experiment_state-*``
    file; empty when there is none yet or it is being written."""
    states = [n for n in storage.list_names(sweep.experiment) if n.startswith("experiment_state-")]
    text = storage.read_text(sweep.experiment / max(states)) if states else None
    try:
        data = json.loads(text or "")
    except json.JSONDecodeError:
        return {}
    out = {}
    for trial_json, meta_json in data["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        last = meta.get("last_result") or {}
        out[trial["trial_id"]] = (
            trial["status"],
            int(last.get("iteration", 0)) if isinstance(last, dict) else 0,
        )
    return out
