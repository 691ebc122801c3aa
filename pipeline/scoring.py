"""Empathy scoring: the three identifiers turn (context, response) pairs into EPITOME level scores.

One API for every stage that needs levels (labelling, rewards, evaluation, serving): an
:class:`EmpathyScorer` holds the ER/IP/EX identifiers with their own tokenizers and returns a
:class:`LevelScores` (per mechanism, ``(N, 3)`` probabilities and ``(N,)`` argmax levels).
Inputs are encoded by :func:`pipeline.encoding.encode_pairs`, the truncation rule of training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from transformers import PreTrainedTokenizerBase

from pipeline import storage
from pipeline.config import MECHANISMS, IdentifiersConfig
from pipeline.encoding import encode_pairs
from pipeline.models import (
    NUM_LEVELS,
    EmpathyIdentifier,
    ModelSourceError,
    load_identifier,
    use_fastest_attention,
)
from pipeline.models.identifier import META_FILE

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

_LOG_TINY = float(np.log(np.finfo(np.float32).tiny))
"""log of the smallest normal float32: the floor of log-probabilities rebuilt from probabilities."""


def level_columns(mechanisms: Sequence[str] = MECHANISMS) -> list[str]:
    """Flat column names of :meth:`LevelScores.to_columns`: ``er_level, er_p0, er_p1, er_p2, ip_level, ...``."""
    return [
        f"{m.lower()}_{suffix}"
        for m in mechanisms
        for suffix in ("level", *(f"p{k}" for k in range(NUM_LEVELS)))
    ]


@dataclass(frozen=True)
class LevelScores:
    """Identifier outputs for ``N`` pairs, per mechanism (keys in scoring order, e.g. ``ER, IP, EX``).

    Build it with :meth:`from_logits` (exact log-probabilities) or :meth:`from_probs`.
    """

    probs: dict[str, FloatArray]
    """Mechanism -> (N, 3) float32 level probabilities; each row sums to 1."""
    levels: dict[str, IntArray]
    """Mechanism -> (N,) int64 predicted level, the argmax of ``probs``."""
    logprobs: dict[str, FloatArray]
    """Mechanism -> (N, 3) float32 log-probabilities (log-softmax of the logits, so no ``-inf``)."""

    def __post_init__(self) -> None:
        if not (self.probs.keys() == self.levels.keys() == self.logprobs.keys()):
            raise ValueError(
                f"LevelScores: probs {list(self.probs)}, levels {list(self.levels)} and logprobs "
                f"{list(self.logprobs)} must name the same mechanisms"
            )
        sizes = {m: p.shape for m, p in self.probs.items()}
        n = len(self)
        for m in self.probs:
            shapes = (self.probs[m].shape, self.logprobs[m].shape, self.levels[m].shape)
            if shapes != ((n, NUM_LEVELS), (n, NUM_LEVELS), (n,)):
                raise ValueError(
                    f"LevelScores[{m}]: probs/logprobs/levels have shapes {shapes}; expected "
                    f"(N, {NUM_LEVELS}), (N, {NUM_LEVELS}), (N,) with one N for all mechanisms ({sizes})"
                )

    @classmethod
    def from_logits(cls, logits: Mapping[str, torch.Tensor | npt.ArrayLike]) -> LevelScores:
        """Scores from raw identifier logits, mechanism -> (N, 3)."""
        logprobs = {
            m: torch.log_softmax(torch.as_tensor(x, dtype=torch.float32), dim=-1).numpy()
            for m, x in logits.items()
        }
        return cls._from_logprobs(logprobs)

    @classmethod
    def from_probs(cls, probs: Mapping[str, npt.ArrayLike]) -> LevelScores:
        """Scores from stored probabilities, mechanism -> (N, 3) (e.g. read back from a label file).

        Log-probabilities are ``log(probs)`` floored at ``log`` of the smallest normal float32 (about
        -87.3), so a probability stored as 0 gives a large finite cross-entropy instead of ``inf``.
        """
        out_probs: dict[str, FloatArray] = {}
        out_logprobs: dict[str, FloatArray] = {}
        out_levels: dict[str, IntArray] = {}
        for m, p in probs.items():
            arr = np.asarray(p, dtype=np.float32).reshape(-1, NUM_LEVELS)
            out_probs[m] = arr
            with np.errstate(divide="ignore"):
                out_logprobs[m] = np.maximum(np.log(arr), np.float32(_LOG_TINY)).astype(np.float32)
            out_levels[m] = arr.argmax(axis=1).astype(np.int64)
        return cls(out_probs, out_levels, out_logprobs)

    @classmethod
    def _from_logprobs(cls, logprobs: Mapping[str, FloatArray]) -> LevelScores:
        probs = {m: np.exp(lp).astype(np.float32) for m, lp in logprobs.items()}
        levels = {m: p.argmax(axis=1).astype(np.int64) for m, p in probs.items()}
        return cls(probs, levels, {m: np.asarray(lp, dtype=np.float32) for m, lp in logprobs.items()})

    @classmethod
    def empty(cls, mechanisms: Sequence[str] = MECHANISMS) -> LevelScores:
        """Scores of zero pairs: ``(0, 3)`` probabilities and ``(0,)`` levels per mechanism."""
        return cls._from_logprobs({m: np.zeros((0, NUM_LEVELS), dtype=np.float32) for m in mechanisms})

    @classmethod
    def concat(cls, parts: Sequence[LevelScores]) -> LevelScores:
        """Scores of several batches, in the order given (all must have the same mechanisms)."""
        if not parts:
            raise ValueError("LevelScores.concat needs at least one part. Fix: use LevelScores.empty().")
        mechanisms = parts[0].mechanisms
        for i, part in enumerate(parts):
            if part.mechanisms != mechanisms:
                raise ValueError(
                    f"LevelScores.concat: part {i} has mechanisms {part.mechanisms}, part 0 has {mechanisms}"
                )
        return cls(
            {m: np.concatenate([p.probs[m] for p in parts]) for m in mechanisms},
            {m: np.concatenate([p.levels[m] for p in parts]) for m in mechanisms},
            {m: np.concatenate([p.logprobs[m] for p in parts]) for m in mechanisms},
        )

    @classmethod
    def from_columns(
        cls, columns: Mapping[str, npt.ArrayLike], mechanisms: Sequence[str] = MECHANISMS
    ) -> LevelScores:
        """The inverse of :meth:`to_columns` (levels are recomputed as the argmax of the probabilities)."""
        probs: dict[str, npt.ArrayLike] = {}
        for m in mechanisms:
            names = [f"{m.lower()}_p{k}" for k in range(NUM_LEVELS)]
            missing = [n for n in names if n not in columns]
            if missing:
                raise KeyError(
                    f"LevelScores.from_columns: no column {missing[0]!r} for mechanism {m}; got "
                    f"{sorted(columns)}. Fix: pass a table written by the label stage (to_columns)."
                )
            probs[m] = np.stack([np.asarray(columns[n], dtype=np.float32) for n in names], axis=1)
        return cls.from_probs(probs)

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """Mechanism names in order."""
        return tuple(self.probs)

    def __len__(self) -> int:
        """Number of scored pairs ``N``."""
        return int(next(iter(self.probs.values())).shape[0]) if self.probs else 0

    def gold_logprob(self, gold: Mapping[str, npt.ArrayLike]) -> dict[str, FloatArray]:
        """``log p_m(l_m)`` per mechanism: the log-probability of the gold level ``l_m``.

        EmpRL's reward uses the cross-entropy ``CE_m = -log p_m(l_m)`` between the identifier's
        distribution on the generated response and the gold response's level.

        Args:
            gold: mechanism -> (N,) integer levels in ``0..2``, for every mechanism of these scores.

        Returns:
            mechanism -> (N,) float32 log-probabilities (finite, <= 0).
        """
        n = len(self)
        out: dict[str, FloatArray] = {}
        for m in self.mechanisms:
            if m not in gold:
                raise KeyError(f"gold_logprob: no gold levels for mechanism {m}; got {sorted(gold)}")
            levels = np.asarray(gold[m])
            if levels.shape != (n,):
                raise ValueError(f"gold_logprob: gold[{m}] has shape {levels.shape}; expected ({n},)")
            if not np.issubdtype(levels.dtype, np.integer):
                raise ValueError(f"gold_logprob: gold[{m}] has dtype {levels.dtype}; expected integer levels")
            bad = np.flatnonzero((levels < 0) | (levels >= NUM_LEVELS))
            if bad.size:
                raise ValueError(
                    f"gold_logprob: gold[{m}][{bad[0]}]={levels[bad[0]]} is not a level in 0..{NUM_LEVELS - 1}"
                )
            out[m] = self.logprobs[m][np.arange(n), levels.astype(np.int64)]
        return out

    def to_columns(self) -> dict[str, npt.NDArray[np.generic]]:
        """Flat columns ``er_level, er_p0, er_p1, er_p2, ip_level, ...``, each (N,) (see :func:`level_columns`)."""
        columns: dict[str, npt.NDArray[np.generic]] = {}
        for m in self.mechanisms:
            key = m.lower()
            columns[f"{key}_level"] = self.levels[m]
            for k in range(NUM_LEVELS):
                columns[f"{key}_p{k}"] = np.ascontiguousarray(self.probs[m][:, k])
        return columns


def fetch_identifiers(folder: str | Path, mechanisms: Sequence[str] = MECHANISMS) -> Path:
    """This node's copy of the identifiers folder ``folder`` (a local path, a mirror path or a URI), each
    mechanism's folder brought up to its published version (:func:`pipeline.storage.fetch`, once per node
    and version; nothing to do for a plain local folder). Call it before reading the folder on any node."""
    root = storage.local_path(str(folder)).expanduser()
    for m in mechanisms:
        storage.fetch(root / m)
    return root


def identifier_folders(folder: str | Path, mechanisms: Sequence[str] = MECHANISMS) -> dict[str, Path]:
    """``folder/<mechanism>`` for each mechanism, checked to hold a :func:`save_identifier` folder.

    Raises:
        ModelSourceError: ``folder`` or a mechanism's subfolder is missing; the message names it
            and how to produce it.
    """
    root = fetch_identifiers(folder, mechanisms)  # onto this node when they live in an object store
    shown = storage.display(root)
    fix = (
        "Fix: train the identifiers with `emprl identifiers train` (it writes <run>/identifiers/ER, IP, "
        "EX) and pass that identifiers folder."
    )
    if not root.is_dir():
        raise ModelSourceError(
            f"identifiers folder {shown!r} does not exist ({storage.display(root.resolve())}). {fix}"
        )
    missing = [m for m in mechanisms if not (root / m / META_FILE).is_file()]
    if missing:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ModelSourceError(
            f"identifiers folder {shown!r} has no {' / '.join(f'{m}/' for m in missing)} identifier "
            f"(a subfolder with {META_FILE}, written by save_identifier); subfolders found: {found}. {fix}"
        )
    return {m: root / m for m in mechanisms}


class EmpathyScorer:
    """The ER/IP/EX identifiers, each with its own tokenizer, scoring pairs in eval mode.

    Pairs are scored ``batch_size`` at a time, in order of text length so each batch pads little;
    results come back in input order. Padding does not change a prediction, so the result does
    not depend on ``batch_size`` (up to float rounding, ~1e-6).
    """

    def __init__(
        self,
        identifiers: Mapping[str, tuple[EmpathyIdentifier, PreTrainedTokenizerBase]],
        *,
        max_context_len: int,
        max_response_len: int,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ) -> None:
        if not identifiers:
            raise ValueError("EmpathyScorer needs at least one identifier (mechanism -> (model, tokenizer))")
        for name, value in (
            ("max_context_len", max_context_len),
            ("max_response_len", max_response_len),
            ("batch_size", batch_size),
        ):
            if value < 1:
                raise ValueError(f"EmpathyScorer: {name}={value} must be >= 1")
        for m, (model, _) in identifiers.items():
            if model.num_levels != NUM_LEVELS:
                raise ValueError(
                    f"the {m} identifier predicts {model.num_levels} levels; EPITOME has {NUM_LEVELS}. "
                    "Fix: train it with this project's identifiers stage."
                )
        self.device = torch.device(device)
        self.identifiers = {m: model.to(self.device).eval() for m, (model, _) in identifiers.items()}
        for model in self.identifiers.values():
            use_fastest_attention(model, self.device)
        self.tokenizers = {m: tok for m, (_, tok) in identifiers.items()}
        self.max_context_len = max_context_len
        self.max_response_len = max_response_len
        self.batch_size = batch_size

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """Mechanisms scored, in order."""
        return tuple(self.identifiers)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        max_context_len: int,
        max_response_len: int,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        mechanisms: Sequence[str] = MECHANISMS,
    ) -> EmpathyScorer:
        """Load ``folder/ER``, ``folder/IP``, ``folder/EX`` (each a :func:`save_identifier` folder).

        Raises:
            ModelSourceError: the folder or a mechanism's subfolder is missing or incomplete.
        """
        folders = identifier_folders(folder, mechanisms)
        identifiers = {m: load_identifier(path) for m, path in folders.items()}
        logger.info("loaded identifiers %s from %s onto %s", list(mechanisms), folder, device)
        return cls(
            identifiers,
            max_context_len=max_context_len,
            max_response_len=max_response_len,
            batch_size=batch_size,
            device=device,
        )

    @classmethod
    def from_config(
        cls,
        folder: str | Path,
        cfg: IdentifiersConfig,
        device: str | torch.device = "cpu",
        *,
        mechanisms: Sequence[str] = MECHANISMS,
    ) -> EmpathyScorer:
        """:meth:`from_folder` with lengths and batch size from the ``identifiers`` config section."""
        return cls.from_folder(
            folder,
            max_context_len=cfg.max_context_len,
            max_response_len=cfg.max_response_len,
            batch_size=cfg.score_batch_size,
            device=device,
            mechanisms=mechanisms,
        )

    def score(self, contexts: Sequence[str], responses: Sequence[str]) -> LevelScores:
        """Level scores of ``N`` (context, response) pairs, in input order.

        Texts follow the encoding rule of :mod:`pipeline.encoding`: a context keeps its last
        ``max_context_len`` tokens, a response its first ``max_response_len``; an empty or
        whitespace-only response still gets a defined prediction.

        Raises:
            ValueError: ``contexts`` and ``responses`` differ in length.
            TypeError: an item is not a string.
        """
        if len(contexts) != len(responses):
            raise ValueError(
                f"score got {len(contexts)} contexts but {len(responses)} responses. Fix: pass one context "
                "per response."
            )
        # Lists index fast; a datasets Column or a numpy array would be read item by item below.
        contexts, responses = list(contexts), list(responses)
        _check_strings("contexts", contexts)
        _check_strings("responses", responses)
        n = len(contexts)
        if n == 0:
            return LevelScores.empty(self.mechanisms)
        # One length order for all mechanisms (tokenizers differ; characters are a good proxy).
        order = np.argsort([len(c) + len(r) for c, r in zip(contexts, responses, strict=True)], kind="stable")
        logprobs = {m: np.empty((n, NUM_LEVELS), dtype=np.float32) for m in self.mechanisms}
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                batch_contexts = [contexts[i] for i in idx]
                batch_responses = [responses[i] for i in idx]
                for m, model in self.identifiers.items():
                    batch = encode_pairs(
                        self.tokenizers[m],
                        batch_contexts,
                        batch_responses,
                        max_context_len=self.max_context_len,
                        max_response_len=self.max_response_len,
                    ).to(self.device)
                    logits = model(*batch).float()  # (B, 3)
                    logprobs[m][idx] = torch.log_softmax(logits, dim=-1).cpu().numpy()
        return LevelScores._from_logprobs(logprobs)


def _check_strings(name: str, texts: Iterable[object]) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"score: {name}[{i}] is {type(text).__name__} {text!r}, not str. Fix: pass text (use '' "
                "for an empty response)."
            )
