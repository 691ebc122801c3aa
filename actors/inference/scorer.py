"""Identifier scorer role (labelling and evaluation): the ER/IP/EX identifiers scoring (context, response) pairs.

Owns an :class:`~pipeline.scoring.EmpathyScorer` loaded from an ``identifiers/`` folder (``ER/``,
``IP/``, ``EX/``). Consumes text pairs: a Ray Data batch with ``context`` and ``response`` columns
(``__call__``), or two lists (``score``). Produces level columns ``er_level, er_p0..er_p2, ip_...,
ex_...`` or a :class:`~pipeline.scoring.LevelScores`. Resources: ``resources.reward_cpus`` CPUs
(or a GPU) and ``resources.torch_threads`` torch threads. A plain class, made remote at spawn time.
The identifiers folder may mirror a URI: each worker brings its node's copy up to date first
(:func:`pipeline.scoring.fetch_identifiers`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from actors.cluster.placement import RoleProcess
from pipeline.config import MECHANISMS, IdentifiersConfig
from pipeline.scoring import EmpathyScorer, LevelScores, fetch_identifiers

logger = logging.getLogger(__name__)


class IdentifierScorerWorker(RoleProcess):
    """Scores text pairs with the ER/IP/EX identifiers; usable in-process, as an actor or in ``map_batches``."""

    def __init__(
        self,
        identifiers_dir: str | Path,
        cfg: IdentifiersConfig,
        torch_threads: int = 1,
        device: str = "cpu",
        mechanisms: Sequence[str] = MECHANISMS,
    ) -> None:
        """Load ``identifiers_dir/{ER,IP,EX}`` onto ``device`` with lengths and batch size from ``cfg``."""
        # Threads beyond the CPUs this worker was given make every process on the node crawl.
        torch.set_num_threads(torch_threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        folder = fetch_identifiers(identifiers_dir, mechanisms)
        self.scorer = EmpathyScorer.from_config(folder, cfg, device, mechanisms=mechanisms)
        logger.info("scorer worker ready: pid %d, %d torch threads, %s", os.getpid(), torch_threads, device)

    def score(self, contexts: Sequence[str], responses: Sequence[str]) -> LevelScores:
        """Level scores of ``N`` pairs in input order (see :meth:`EmpathyScorer.score`)."""
        return self.scorer.score(contexts, responses)

    def score_columns(self, contexts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
        """Flat level columns of ``N`` pairs, each (N,): ``er_level, er_p0, er_p1, er_p2, ip_level, ...``."""
        return self.scorer.score(contexts, responses).to_columns()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A Ray Data batch with ``context`` and ``response`` columns, plus the level columns."""
        for column in ("context", "response"):
            if column not in batch:
                raise KeyError(
                    f"IdentifierScorerWorker: the batch has no {column!r} column (columns: {sorted(batch)}). Fix: "
                    "select or rename the text columns to 'context' and 'response'."
                )
        columns = self.score_columns(list(batch["context"]), list(batch["response"]))
        return {**batch, **columns}
