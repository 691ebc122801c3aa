"""What every stage returns: its folder, the metrics it also wrote, and a one-line headline."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import storage


@dataclass(frozen=True)
class StageResult:
    """A finished stage: ``metrics`` is the summary it wrote (JSON-serialisable), ``headline`` one line
    for the terminal, ``outputs`` the artifacts a person or the next stage opens."""

    stage: str
    folder: Path
    metrics: dict[str, Any]
    headline: str
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The metrics with the artifact paths and the wall time, as ``summary.json`` records them."""
        return {
            **self.metrics,
            **{k: storage.display(v) for k, v in self.outputs.items()},
            "seconds": round(self.seconds, 2),
        }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename) so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    storage.publish(path)  # a file mirroring a URI is one object, replaced whole
