"""The terminal and the run log: what a person needs on the terminal, every library's output in a file.

The only place logging is configured. While a job runs, file descriptors 1 and 2 of the process
(and so of the Ray processes it starts, and the worker output Ray forwards) go to the run folder's
log; the terminal gets each stage's start, progress with rate and ETA, headline results and every
warning and error of this process. Ray workers mark their progress lines (:data:`MARK`, set up by
:func:`actors.cluster.worker_setup.worker_logging`) and those are shown too. ``--verbose`` shows everything.
An exception leaves the context with the terminal restored, so its traceback reaches it in full.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from pipeline.progress import WORKER_MARK

HEADLINE_LOGGERS = ("jobs", "__main__")
"""Loggers whose INFO lines reach the terminal (stage starts and results), besides progress lines."""

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TERMINAL_FORMAT = "%(asctime)s %(message)s"
ALARM_FORMAT = "%(asctime)s %(levelname)s: %(message)s"


class _Headlines(logging.Filter):
    """Progress lines, INFO from the headline loggers, WARNING and above from every logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or getattr(record, "progress", False):
            return True
        return any(record.name == n or record.name.startswith(n + ".") for n in HEADLINE_LOGGERS)


class _TerminalFormatter(logging.Formatter):
    """``HH:MM:SS message``; warnings and errors also name their level."""

    def __init__(self) -> None:
        super().__init__(TERMINAL_FORMAT, datefmt="%H:%M:%S")
        self._alarm = logging.Formatter(ALARM_FORMAT, datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return self._alarm.format(record) if record.levelno >= logging.WARNING else super().format(record)


def setup_logging(
    level: str = "INFO", stream: TextIO | None = None, *, verbose: bool = True
) -> logging.Handler:
    """Lines on ``stream`` (stderr): everything with ``verbose``, else only the headlines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    else:
        handler.addFilter(_Headlines())
        handler.setFormatter(_TerminalFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    for noisy in ("urllib3", "filelock", "datasets", "fsspec", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def _forward_worker_progress(terminal: TextIO) -> None:
    """Show the Ray worker lines marked with :data:`WORKER_MARK` on ``terminal`` (all go to the log)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher
    except ImportError:  # pragma: no cover - another Ray: worker progress stays in the log only
        return

    def show(data: dict[str, Any]) -> None:
        for line in data.get("lines", []):
            if line.startswith(WORKER_MARK):
                terminal.write(line[len(WORKER_MARK) :].lstrip() + "\n")
        terminal.flush()

    global_worker_stdstream_dispatcher.remove_handler("emprl_progress")
    global_worker_stdstream_dispatcher.add_handler("emprl_progress", show)


@contextmanager
def console(log_file: Path, *, verbose: bool = False, level: str = "INFO") -> Iterator[TextIO]:
    """Send this process's output (fd 1 and 2) to ``log_file`` and the headlines to the terminal;
    with ``verbose`` everything stays on the terminal and the log gets this process's log lines.

    Yields the terminal's stdout, for the job's final lines (e.g. the report path)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal_out = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    terminal_err = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    log = log_file.open("a", buffering=1)
    if not verbose:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    handler = setup_logging(level, terminal_err, verbose=verbose)
    file_handler = logging.StreamHandler(log)
    file_handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    logging.getLogger().addHandler(file_handler)
    if not verbose:
        _forward_worker_progress(terminal_err)
    logging.getLogger("jobs").info("full log: %s", log_file)
    try:
        yield terminal_out
    finally:
        _stop_forwarding()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        root = logging.getLogger()
        root.removeHandler(file_handler)
        root.removeHandler(handler)
        setup_logging(level, sys.stderr, verbose=True)
        log.close()
        terminal_out.close()
        terminal_err.close()


def _stop_forwarding() -> None:
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher
    except ImportError:  # pragma: no cover
        return
    global_worker_stdstream_dispatcher.remove_handler("emprl_progress")
