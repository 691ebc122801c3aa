"""A PPO run driven from Python (``jobs.stages.ppo_stage``, as docs/stages-from-python.md shows) as a Ray job
of ``test_node_loss.py``: every phase hook and every finished iteration is reported to the test's control
server on 127.0.0.1, and a hook call returns once the server has answered (having started the node kill
meant for that point, if any). Prints ``EMPRL_SUMMARY <json>`` at the end.

    python tests/integration/node_loss_ppo.py '{"run": "s3://...", "control": "http://127.0.0.1:PORT",
                                                "overrides": {"ppo__total_steps": 6, ...}}'
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ppo_inputs import tiny_config

from actors.cluster.session import ray_session
from actors.ppo.controller import IterationReport, PPOController
from jobs.stages import ppo_stage
from pipeline import storage
from pipeline.layout import RunLayout


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    cfg = tiny_config(**spec["overrides"])
    layout = RunLayout(storage.local_path(spec["run"]))
    control = spec["control"]

    def tell(path: str) -> None:
        with urllib.request.urlopen(f"{control}/{path}", timeout=120) as reply:
            reply.read()

    def hook(controller: PPOController, iteration: int, phase: str) -> None:
        tell(f"hook?iteration={iteration}&phase={phase}")

    def sink(report: IterationReport) -> None:
        tell(f"done?iteration={report.iteration}")

    with ray_session(cfg.resources):
        result = ppo_stage(cfg, layout, resume=True, hooks=[hook], sinks=[sink])
    print("EMPRL_SUMMARY " + json.dumps(result.metrics, default=str), flush=True)


if __name__ == "__main__":
    main()
