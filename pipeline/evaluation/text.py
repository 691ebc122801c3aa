"""Reference-based and diversity metrics of generated responses: Dist-n, BLEU-1..4, ROUGE-L, length.

All of them see :func:`tokenize`'s tokens (lowercase + sacrebleu's ``13a`` rule, as in BLEU). Scores
are 0–100 except Dist-n (a fraction) and length (tokens); an empty corpus scores 0.0. Per-item
statistics (:func:`bleu_stats`, :func:`rouge_l_scores`) feed :mod:`pipeline.evaluation.bootstrap`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from sacrebleu.metrics.bleu import BLEU

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

BLEU_MAX_ORDER = 4
"""BLEU-1..BLEU_MAX_ORDER are reported; :func:`bleu_stats` has ``2 + 2 * BLEU_MAX_ORDER`` columns."""

# The source of tokenize() and of per-item counts, which do not depend on smoothing or effective_order;
# effective_order=True only keeps sacrebleu from warning about sentence-level scores.
_SEGMENT_BLEU = BLEU(lowercase=True, tokenize="13a", effective_order=True, max_ngram_order=BLEU_MAX_ORDER)


def tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and split it with sacrebleu's ``13a`` tokenizer (mteval-v13a, as in WMT).

    Punctuation becomes its own token except apostrophes and ``.``/``,`` between digits:
    ``"Don't worry, it's 2.5 km!"`` → ``don't worry , it's 2.5 km !``.
    """
    return str(_SEGMENT_BLEU.tokenizer(text.lower().rstrip())).split()


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Corpus-level Dist-n (Li et al., 2016): distinct n-grams / total n-grams over all ``texts``.

    n-grams never cross response boundaries; a response shorter than ``n`` tokens contributes none.
    0.0 when the corpus has no n-gram at all.
    """
    _check_texts("texts", texts)
    if n < 1:
        raise ValueError(f"n must be >= 1 (1 for Dist-1, 2 for Dist-2), got {n}")
    distinct: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        tokens = tokenize(text)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        distinct.update(grams)
        total += len(grams)
    return len(distinct) / total if total else 0.0


def bleu_stats(hypotheses: Sequence[str], references: Sequence[str]) -> IntArray:
    """Per-item BLEU sufficient statistics, ``(N, 2 + 2 * BLEU_MAX_ORDER)`` int64.

    Columns: ``hyp_len, ref_len, match_1..match_4, total_1..total_4`` — clipped n-gram matches
    and hypothesis n-gram counts per order, from sacrebleu on :func:`tokenize`'s tokens. Rows add up:
    the corpus statistics of any subset (or resample) of items are the sum of its rows.
    """
    _check_pairs(hypotheses, references)
    stats = np.zeros((len(hypotheses), 2 + 2 * BLEU_MAX_ORDER), dtype=np.int64)
    for i, (hyp, ref) in enumerate(zip(hypotheses, references, strict=True)):
        score = _SEGMENT_BLEU.sentence_score(hyp, [ref])
        stats[i] = [score.sys_len, score.ref_len, *score.counts, *score.totals]
    return stats


def bleu_from_stats(stats: IntArray) -> dict[str, float]:
    """Corpus BLEU-1..4 (0–100) and the brevity penalty from summed :func:`bleu_stats` rows.

    BLEU-n is *cumulative*: ``BP · exp(Σ_{k≤n} log p_k / n)`` with ``BP = min(1, exp(1 − r/c))``,
    ``p_k`` the corpus-level clipped k-gram precision, sacrebleu's default ``exp`` smoothing for
    orders with no match and no effective order — the same as
    ``sacrebleu.metrics.BLEU(lowercase=True, max_ngram_order=n).corpus_score(hyps, [refs]).score``.
    """
    stats = np.asarray(stats, dtype=np.int64)
    if stats.ndim != 2 or stats.shape[1] != 2 + 2 * BLEU_MAX_ORDER:
        raise ValueError(
            f"stats must have shape (N, {2 + 2 * BLEU_MAX_ORDER}) as returned by bleu_stats, got {stats.shape}"
        )
    total = stats.sum(axis=0).tolist()
    hyp_len, ref_len = total[0], total[1]
    matches, counts = total[2 : 2 + BLEU_MAX_ORDER], total[2 + BLEU_MAX_ORDER :]
    out: dict[str, float] = {}
    bp = 1.0
    for n in range(1, BLEU_MAX_ORDER + 1):
        # compute_bleu mutates its lists under add-k smoothing only; copies keep that harmless.
        score = BLEU.compute_bleu(
            list(matches[:n]), list(counts[:n]), hyp_len, ref_len, smooth_method="exp", max_ngram_order=n
        )
        out[f"bleu{n}"] = float(score.score)
        bp = float(score.bp)
    out["brevity_penalty"] = bp
    return out


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 of ``hypotheses[i]`` against the single reference ``references[i]``.

    Keys ``bleu1``..``bleu4`` (cumulative BLEU-n, 0–100) and ``brevity_penalty``; see
    :func:`bleu_from_stats` for the definition.
    """
    return bleu_from_stats(bleu_stats(hypotheses, references))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a)·len(b)) DP, two rows)."""
    if len(b) > len(a):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        curr = [0]
        for j, y in enumerate(b):
            curr.append(prev[j] + 1 if x == y else max(prev[j + 1], curr[j]))
        prev = curr
    return prev[-1]


def rouge_l_scores(hypotheses: Sequence[str], references: Sequence[str], *, beta: float = 1.0) -> FloatArray:
    """Sentence-level ROUGE-L F-measure (Lin, 2004) per item, ``(N,)`` float64 on the 0–100 scale.

    With ``L = LCS(hyp, ref)``, ``P = L/|hyp|``, ``R = L/|ref|``:
    ``F = (1 + β²)·P·R / (R + β²·P)``; β = 1 (the F1 of Google's ``rouge-score``) by default,
    pycocoevalcap uses β = 1.2. ``F = 0`` when either side is empty or ``L = 0``.
    """
    _check_pairs(hypotheses, references)
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (1.0 for F1, 1.2 as in pycocoevalcap), got {beta}")
    scores = np.zeros(len(hypotheses), dtype=np.float64)
    for i, (hyp, ref) in enumerate(zip(hypotheses, references, strict=True)):
        h, r = tokenize(hyp), tokenize(ref)
        lcs = lcs_length(h, r)
        if lcs:
            precision, recall = lcs / len(h), lcs / len(r)
            scores[i] = 100.0 * (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
    return scores


def rouge_l(hypotheses: Sequence[str], references: Sequence[str], *, beta: float = 1.0) -> float:
    """Mean of :func:`rouge_l_scores` (0–100); 0.0 for an empty corpus."""
    scores = rouge_l_scores(hypotheses, references, beta=beta)
    return float(scores.mean()) if scores.size else 0.0


def lengths(texts: Sequence[str]) -> IntArray:
    """Number of :func:`tokenize` tokens of each text, ``(N,)`` int64."""
    _check_texts("texts", texts)
    return np.array([len(tokenize(t)) for t in texts], dtype=np.int64)


def mean_length(texts: Sequence[str]) -> float:
    """Mean response length in :func:`tokenize` tokens (punctuation counts); 0.0 for no texts."""
    counts = lengths(texts)
    return float(counts.mean()) if counts.size else 0.0


def _check_texts(name: str, texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError(
            f"{name} must be a list of strings, got a single str ({texts[:40]!r}); wrap it in a list"
        )
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(
            f"{name}[{bad}] is {type(texts[bad]).__name__} ({texts[bad]!r}), not str; decode responses to text first"
        )


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    _check_texts("hypotheses", hypotheses)
    _check_texts("references", references)
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses has {len(hypotheses)} items but references has {len(references)}; "
            "pass one reference per hypothesis, in the same order"
        )
