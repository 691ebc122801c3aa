"""Text metrics against hand-computed values, sacrebleu itself, slow reference loops and invariants."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from sacrebleu.metrics.bleu import BLEU

from pipeline.evaluation.text import (
    bleu,
    bleu_from_stats,
    bleu_stats,
    distinct_n,
    lcs_length,
    lengths,
    mean_length,
    rouge_l,
    rouge_l_scores,
    tokenize,
)

WORDS = "i am so sorry to hear that . what happened ? that is great news , wow !".split()


def _random_corpus(rng: np.random.Generator, n: int, low: int, high: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, int(rng.integers(low, high + 1)))) for _ in range(n)]


def test_tokenize_lowercases_and_splits_punctuation_like_13a() -> None:
    assert tokenize("Don't worry, it's 2.5 km!") == ["don't", "worry", ",", "it's", "2.5", "km", "!"]
    assert tokenize("I'm SO sorry.") == ["i'm", "so", "sorry", "."]
    assert tokenize("") == []


def test_distinct_n_hand_computed_and_n_grams_stay_inside_a_response() -> None:
    texts = ["a b a", "b a"]
    assert distinct_n(texts, 1) == pytest.approx(2 / 5)
    # bigrams: (a b) (b a) | (b a): 2 distinct of 3; crossing the boundary would add (a b) again
    assert distinct_n(texts, 2) == pytest.approx(2 / 3)
    assert distinct_n(texts, 3) == pytest.approx(1 / 1)
    assert distinct_n(texts, 4) == 0.0


def test_distinct_n_of_a_repeated_sentence_is_one_over_the_repeats() -> None:
    texts = ["I am so sad ."] * 10
    assert distinct_n(texts, 1) == pytest.approx(5 / 50)
    assert distinct_n(texts, 2) == pytest.approx(4 / 40)
    assert distinct_n(texts[:1], 1) == distinct_n(texts[:1], 2) == 1.0
    assert distinct_n([], 1) == distinct_n(["", "hi"], 2) == 0.0


def test_distinct_n_matches_a_counter_reference() -> None:
    rng = np.random.default_rng(0)
    texts = _random_corpus(rng, 50, 0, 12)
    for n in (1, 2, 3):
        grams: Counter[tuple[str, ...]] = Counter()
        for text in texts:
            words = text.lower().split()  # WORDS are already 13a tokens
            for i in range(len(words) - n + 1):
                grams[tuple(words[i : i + n])] += 1
        assert distinct_n(texts, n) == pytest.approx(len(grams) / sum(grams.values()))


def test_distinct_n_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="n must be >= 1"):
        distinct_n(["a b"], 0)
    with pytest.raises(TypeError, match="got a single str"):
        distinct_n("a b c", 1)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        distinct_n(["a", 3], 1)  # type: ignore[list-item]


def test_bleu_hand_computed_with_clipping_and_exp_smoothing() -> None:
    # hyp "the cat the cat" vs ref "the cat sat": hyp is longer, so BP = 1.
    # p1 = clipped 2/4; p2 = 1/3 ("the cat" clipped to 1); p3, p4 have no match and get sacrebleu's
    # exp smoothing 1/(2^k · total_n): p3 = 1/(2·2), p4 = 1/(4·1).
    got = bleu(["the cat the cat"], ["the cat sat"])
    p = [1 / 2, 1 / 3, 1 / 4, 1 / 4]
    for n in range(1, 5):
        assert got[f"bleu{n}"] == pytest.approx(100 * math.exp(sum(map(math.log, p[:n])) / n))
    assert got["brevity_penalty"] == 1.0


def test_bleu_brevity_penalty_and_identity() -> None:
    short = bleu(["the cat"], ["the cat sat on"])
    assert short["brevity_penalty"] == pytest.approx(math.exp(1 - 4 / 2))
    assert short["bleu1"] == pytest.approx(100 * math.exp(-1))
    same = bleu(["The cat sat on the mat ."], ["the cat sat on the mat ."])  # lowercased
    assert [same[f"bleu{n}"] for n in range(1, 5)] == pytest.approx([100.0] * 4)
    assert bleu([], [])["bleu4"] == 0.0


def test_bleu_matches_sacrebleu_corpus_score() -> None:
    rng = np.random.default_rng(1)
    hyps = [*_random_corpus(rng, 60, 1, 15), "I'm so sorry to hear that. What happened?", ""]
    refs = [*_random_corpus(rng, 60, 1, 20), "i am sorry to hear that , what happened ?", "hello there"]
    got = bleu(hyps, refs)
    for n in range(1, 5):
        expected = BLEU(lowercase=True, max_ngram_order=n).corpus_score(hyps, [refs]).score
        assert got[f"bleu{n}"] == pytest.approx(expected)


def test_bleu_stats_rows_add_up_to_any_subset_with_repeats() -> None:
    rng = np.random.default_rng(2)
    hyps, refs = _random_corpus(rng, 40, 1, 12), _random_corpus(rng, 40, 1, 12)
    stats = bleu_stats(hyps, refs)
    assert stats.shape == (40, 10) and stats.dtype == np.int64
    assert stats[:, 0].tolist() == lengths(hyps).tolist()  # hyp_len is the tokenize() length
    idx = rng.integers(0, 40, 40)
    sub_h, sub_r = [hyps[i] for i in idx], [refs[i] for i in idx]
    assert bleu_from_stats(stats[idx]) == pytest.approx(bleu(sub_h, sub_r))
    assert bleu_from_stats(stats[idx])["bleu4"] == pytest.approx(
        BLEU(lowercase=True).corpus_score(sub_h, [sub_r]).score
    )


def test_bleu_rejects_misaligned_input() -> None:
    with pytest.raises(ValueError, match="hypotheses has 2 items but references has 1"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"stats must have shape \(N, 10\)"):
        bleu_from_stats(np.zeros((3, 4), dtype=np.int64))


def _lcs_brute_force(a: list[str], b: list[str]) -> int:
    def is_subsequence(sub: tuple[str, ...], seq: list[str]) -> bool:
        it = iter(seq)
        return all(tok in it for tok in sub)

    for k in range(len(a), 0, -1):
        if any(is_subsequence(sub, b) for sub in itertools.combinations(a, k)):
            return k
    return 0


def test_lcs_matches_brute_force_on_random_token_lists() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        a = rng.choice(list("abcd"), int(rng.integers(0, 8))).tolist()
        b = rng.choice(list("abcd"), int(rng.integers(0, 8))).tolist()
        assert lcs_length(a, b) == lcs_length(b, a) == _lcs_brute_force(a, b)


def test_rouge_l_hand_computed() -> None:
    # LCS("a b c d", "a c e") = "a c": P = 2/4, R = 2/3
    p, r = 2 / 4, 2 / 3
    assert rouge_l(["a b c d"], ["a c e"]) == pytest.approx(100 * 2 * p * r / (p + r))
    assert rouge_l(["a b c d"], ["a c e"], beta=1.2) == pytest.approx(100 * 2.44 * p * r / (r + 1.44 * p))
    scores = rouge_l_scores(["a b c d", "x y", "", "same words ."], ["a c e", "z", "a", "Same words."])
    assert scores == pytest.approx([100 * 2 * p * r / (p + r), 0.0, 0.0, 100.0])
    assert rouge_l(["a b c d", "x y"], ["a c e", "z"]) == pytest.approx(scores[:2].mean())


def test_rouge_l_invariants() -> None:
    rng = np.random.default_rng(4)
    hyps, refs = _random_corpus(rng, 30, 1, 12), _random_corpus(rng, 30, 1, 12)
    assert rouge_l(hyps, hyps) == pytest.approx(100.0)
    assert rouge_l(hyps, refs) == pytest.approx(rouge_l(refs, hyps))  # F1 is symmetric
    scores = rouge_l_scores(hyps, refs)
    assert ((scores >= 0) & (scores <= 100)).all()
    assert rouge_l([], []) == 0.0
    with pytest.raises(ValueError, match="beta must be > 0"):
        rouge_l(["a"], ["a"], beta=0.0)
    with pytest.raises(ValueError, match="hypotheses has 1 items but references has 2"):
        rouge_l(["a"], ["a", "b"])


def test_mean_length_counts_tokenize_tokens() -> None:
    assert lengths(["Hi there!", "ok", ""]).tolist() == [3, 1, 0]
    assert mean_length(["Hi there!", "ok", ""]) == pytest.approx(4 / 3)
    assert mean_length([]) == 0.0
    with pytest.raises(TypeError, match="got a single str"):
        mean_length("hello")
