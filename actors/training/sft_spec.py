"""What an SFT run is: the :class:`SFTSpec` shipped to every worker, and what makes a run resumable.

:func:`fingerprint` (the training settings and a digest of the token data) goes into every
checkpoint's state, so the driver (:mod:`actors.training.sft`) can refuse to resume another run's
checkpoints; :func:`sft_checkpoint_order` ranks the run's checkpoints on storage.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.training import harness
from pipeline.config import RolloutConfig, SFTConfig
from pipeline.training.sft import Seq2SeqExamples

EXPORT_DIR = "policy"
"""Folder of the final checkpoint that holds the exported policy."""


@dataclass(frozen=True)
class SFTSpec:
    """Everything the SFT run needs (shipped to every worker)."""

    cfg: SFTConfig
    start_dir: str
    """Policy folder or URI (``save_policy`` form) training starts from; its tokenizer tokenised the data."""
    out_dir: str
    """Stage folder or URI (:func:`pipeline.storage.portable`): rank 0 writes samples and
    TensorBoard logs there during training (each node under its mirror, published)."""
    train: Seq2SeqExamples
    valid: Seq2SeqExamples
    samples: tuple[tuple[str, str], ...]
    """(context, gold response) texts of the first validation examples, answered every epoch."""
    decoding: RolloutConfig
    """Sampling settings for the epoch samples (paper: top-k 20, temperature 0.9)."""
    seed: int
    torch_threads: int = 1
    log_every: int = 1
    crash_points: tuple[tuple[int, int, int], ...] = ()
    """Fault injection for tests: ``(epoch, step, rank)``, 1-based epoch and step: that rank's
    process dies right after that step (after any checkpoint of that step)."""
    crash_dir: str | None = None
    """Folder of marker files recording the injected crashes that happened (never repeated)."""


RESUME_SAFE_FIELDS = frozenset({"keep_checkpoints", "checkpoint_every", "eval_batch_size", "num_samples"})
"""SFT settings that may change between a run and its resumption (they do not alter training)."""


def fingerprint(spec: SFTSpec) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: training settings and the exact token data."""
    digest = hashlib.sha256()
    for examples in (spec.train, spec.valid):
        for array in (
            examples.source_flat,
            examples.source_offsets,
            examples.target_flat,
            examples.target_offsets,
        ):
            digest.update(array.tobytes())
    settings = {k: v for k, v in dataclasses.asdict(spec.cfg).items() if k not in RESUME_SAFE_FIELDS}
    return {"sft": _dotted(settings), "seed": spec.seed, "data_sha256": digest.hexdigest()}


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 1e-4}}`` as ``{"optimizer.lr": 1e-4}`` (so a change names its key)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(
            _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        )
    return flat


def sft_checkpoint_order(folder: Path) -> tuple[bool, int] | None:
    """Completeness and order of SFT checkpoints: (finished, global step) of one with its state."""
    state = harness.read_state(folder)
    return (bool(state["done"]), int(state["global_step"])) if state is not None else None
