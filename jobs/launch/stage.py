"""One stage from the command line: the run's console, the prepared data, a Ray session, the result.

User errors (bad data, a resume that would mix two runs, missing inputs) end the command with their
message and no traceback; everything else propagates with its traceback to the terminal.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from actors.cluster.recovery import NodeLostError
from actors.cluster.session import ray_session
from actors.training.sft import ResumeError
from jobs.launch.options import stage_console
from jobs.stages import PPOInputError, StageResult
from jobs.stages.tune import SweepError
from pipeline.config import Config
from pipeline.config.objective import ObjectiveError
from pipeline.config.search_space import SearchSpaceError
from pipeline.data import DataError, PreparedData, prepare_datasets
from pipeline.evaluation.suite import EvaluationInputError
from pipeline.layout import RunLayout

USER_ERRORS: dict[type[Exception], str] = {
    DataError: "data error",
    ResumeError: "resume error",
    PPOInputError: "PPO input error",
    EvaluationInputError: "evaluation input error",
    SearchSpaceError: "search space error",
    SweepError: "sweep error",
    ObjectiveError: "sweep objective error",
}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the user errors of :data:`USER_ERRORS` into an exit with their message (no traceback)."""
    try:
        yield
    except tuple(USER_ERRORS) as exc:
        label = next(text for kind, text in USER_ERRORS.items() if isinstance(exc, kind))
        raise SystemExit(f"{label}: {exc}") from None


def resume_command(args: argparse.Namespace) -> str:
    """The command line that was run, as ``emprl ...`` with ``--resume`` (for a stop the user resumes)."""
    argv = list(getattr(args, "argv", None) or [args.command])
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(["emprl", *argv])


@contextmanager
def node_loss_stop(args: argparse.Namespace, command: str | None = None) -> Iterator[None]:
    """A :class:`NodeLostError` ends the command with its message and the exact command that resumes it
    (``command``, or this command line with ``--resume``)."""
    try:
        yield
    except NodeLostError as exc:
        raise SystemExit(
            f"node lost: {exc}\nFix: once the cluster has those resources again (or on a new cluster that "
            "reaches the run folder), resume from the last complete checkpoint:\n  "
            f"{command or resume_command(args)}"
        ) from None


def launch(
    args: argparse.Namespace,
    cfg: Config,
    layout: RunLayout,
    stage: Callable[[PreparedData | None], StageResult],
    *,
    needs_data: bool = True,
) -> StageResult:
    """Run ``stage`` (given the prepared data when ``needs_data``) inside the run's console and a Ray
    session; print its headline and summary on the terminal."""
    with stage_console(args, layout) as terminal:
        with user_errors(), node_loss_stop(args):
            data = prepare_datasets(cfg.data) if needs_data else None
            with ray_session(cfg.resources):
                result = stage(data)
        terminal.write(f"{result.headline}\n{json.dumps(result.summary(), indent=2, default=str)}\n")
    return result
