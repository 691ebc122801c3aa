"""What every Ray worker process of a job runs first (Ray's ``worker_process_setup_hook``): the project's
logging. It imports nothing heavy: every worker process runs it, including the many that never load a model
(prestarted idle workers, probes, Tune's and Train's own actors), and ``torch`` alone costs seconds of CPU.
"""

from __future__ import annotations

import logging
import os
import sys

from pipeline.progress import WORKER_MARK

WORKER_SETUP_HOOK = "actors.cluster.worker_setup.worker_logging"
"""The hook's import path, as the runtime environment names it."""


class _Marked(logging.Filter):
    """Progress lines and warnings of the project's own loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(record, "progress", False)


def worker_logging() -> None:
    """Ray's setup hook for every worker process: the project's loggers print to stderr at INFO (Ray
    forwards it to the job's log), their progress lines and warnings marked for the terminal, and
    transformers' and Hugging Face's progress bars and advisories off (through their variables, read when
    transformers is imported; directly when it already is)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    marked = logging.StreamHandler()
    marked.addFilter(_Marked())
    marked.setFormatter(logging.Formatter(WORKER_MARK + "%(message)s"))
    plain = logging.StreamHandler()
    plain.addFilter(lambda record: not _Marked().filter(record))
    plain.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("pipeline", "actors"):
        project = logging.getLogger(name)
        project.handlers = [marked, plain]
        project.setLevel(logging.INFO)
        project.propagate = False
