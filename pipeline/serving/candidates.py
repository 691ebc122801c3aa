"""Empathy-aware decoding: of several sampled responses, the one whose levels are closest to targets.

The identifiers give each response a probability for levels 0, 1, 2 of each mechanism; the distance
of a response to targets ``t`` is the expected absolute level error summed over the targeted
mechanisms, ``sum_m sum_k P_m(k) * |k - t_m|``: 0 when the identifiers are sure of every target level,
and a confident wrong level costs more than an unsure one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def level_distance(probs: Mapping[str, Sequence[float]], targets: Mapping[str, int]) -> float:
    """Expected absolute level error of one response (``probs``: mechanism -> P(level 0, 1, 2)) to
    ``targets`` (mechanism -> level), over the targeted mechanisms.

    Raises:
        KeyError: a target names a mechanism the identifiers do not score.
    """
    total = 0.0
    for mechanism, target in targets.items():
        total += sum(float(p) * abs(level - target) for level, p in enumerate(probs[mechanism]))
    return total


def closest(
    candidates: Sequence[Mapping[str, Sequence[float]]], targets: Mapping[str, int]
) -> tuple[int, list[float]]:
    """The index of the candidate closest to ``targets`` (the first on ties: sampling order) and every
    candidate's distance."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    distances = [level_distance(probs, targets) for probs in candidates]
    return min(range(len(distances)), key=lambda i: (distances[i], i)), distances
