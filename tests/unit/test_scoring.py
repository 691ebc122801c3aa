"""EmpathyScorer and LevelScores on tiny random identifiers built and saved through the production code."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers/huggingface_hub read it

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import DIALOGUE

from pipeline.config import MECHANISMS, IdentifiersConfig
from pipeline.models import (
    ModelSourceError,
    build_identifier,
    save_identifier,
    train_tokenizer,
    use_fastest_attention,
)
from pipeline.scoring import EmpathyScorer, LevelScores, level_columns

pytestmark = pytest.mark.unit

TEXTS = DIALOGUE[:12]
CFG = IdentifiersConfig(d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=400, dropout=0.1)
MAX_CONTEXT, MAX_RESPONSE = 40, 16


def make_identifiers(folder: Path, cfg: IdentifiersConfig = CFG, seed: int = 0) -> Path:
    """Save random ER/IP/EX identifiers (different weights and tokenizers) under ``folder``."""
    for i, m in enumerate(MECHANISMS):
        torch.manual_seed(seed + i)
        tokenizer = train_tokenizer(TEXTS[i:] + TEXTS[:i], cfg.vocab_size)
        save_identifier(build_identifier(cfg, tokenizer), tokenizer, folder / m)
    return folder


@pytest.fixture(scope="module")
def identifiers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_identifiers(tmp_path_factory.mktemp("identifiers"))


@pytest.fixture(scope="module")
def scorer(identifiers_dir: Path) -> EmpathyScorer:
    torch.set_num_threads(1)
    return EmpathyScorer.from_folder(
        identifiers_dir, max_context_len=MAX_CONTEXT, max_response_len=MAX_RESPONSE, batch_size=4
    )


def pairs(n: int) -> tuple[list[str], list[str]]:
    """``n`` pairs of varied lengths, so length-sorting really reorders them."""
    contexts = [" ".join(TEXTS[(i * 5) % len(TEXTS)] for _ in range(1 + i % 4)) for i in range(n)]
    responses = [" ".join(TEXTS[(i * 7 + 1) % len(TEXTS)].split()[: 2 + (i * 3) % 11]) for i in range(n)]
    return contexts, responses


def test_shapes_probabilities_and_levels(scorer: EmpathyScorer) -> None:
    contexts, responses = pairs(11)
    scores = scorer.score(contexts, responses)
    assert len(scores) == 11 and scores.mechanisms == MECHANISMS
    for m in MECHANISMS:
        assert scores.probs[m].shape == (11, 3) and scores.probs[m].dtype == np.float32
        assert scores.levels[m].shape == (11,) and scores.levels[m].dtype == np.int64
        np.testing.assert_allclose(scores.probs[m].sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(scores.levels[m], scores.probs[m].argmax(axis=1))
    # eval mode: dropout off, so scoring is deterministic
    again = scorer.score(contexts, responses)
    for m in MECHANISMS:
        np.testing.assert_array_equal(again.probs[m], scores.probs[m])


def test_cpu_attention_kernel_gives_the_same_scores(scorer: EmpathyScorer) -> None:
    encoders = [
        e for model in scorer.identifiers.values() for e in (model.context_encoder, model.response_encoder)
    ]
    assert {e.config._attn_implementation for e in encoders} == {"eager"}  # chosen for the CPU
    contexts, responses = pairs(9)
    eager = scorer.score(contexts, responses)
    for model in scorer.identifiers.values():  # only the kernel choice: the models stay on the CPU
        use_fastest_attention(model, "cuda")
    try:
        assert {e.config._attn_implementation for e in encoders} == {"sdpa"}
        sdpa = scorer.score(contexts, responses)
    finally:
        for model in scorer.identifiers.values():
            use_fastest_attention(model, "cpu")
    for m in MECHANISMS:
        np.testing.assert_allclose(eager.logprobs[m], sdpa.logprobs[m], atol=1e-5)


def test_order_is_preserved_under_length_sorting(scorer: EmpathyScorer) -> None:
    contexts, responses = pairs(13)
    together = scorer.score(contexts, responses)
    one_by_one = LevelScores.concat(
        [scorer.score([c], [r]) for c, r in zip(contexts, responses, strict=True)]
    )
    for m in MECHANISMS:
        np.testing.assert_allclose(together.probs[m], one_by_one.probs[m], atol=1e-5)
        np.testing.assert_array_equal(together.levels[m], one_by_one.levels[m])


def test_batch_size_does_not_change_scores(identifiers_dir: Path) -> None:
    contexts, responses = pairs(30)
    results = [
        EmpathyScorer.from_folder(
            identifiers_dir, max_context_len=MAX_CONTEXT, max_response_len=MAX_RESPONSE, batch_size=b
        ).score(contexts, responses)
        for b in (1, 64)
    ]
    for m in MECHANISMS:
        np.testing.assert_allclose(results[0].probs[m], results[1].probs[m], atol=1e-5)


def test_identifiers_differ_per_mechanism(scorer: EmpathyScorer) -> None:
    scores = scorer.score(*pairs(5))
    assert not np.allclose(scores.probs["ER"], scores.probs["IP"])


@pytest.mark.parametrize(
    "response",
    [
        "",
        "   \n\t ",
        " ".join(["word"] * 10_000),
        "Je suis désolé, ça a dû être très dur 😢",
        "我很难过听到这个消息。你还好吗？",
        "🙂🙃😊" * 50,
    ],
    ids=["empty", "whitespace", "10k-words", "accents-emoji", "cjk", "emoji-run"],
)
def test_edge_case_responses_get_defined_scores(scorer: EmpathyScorer, response: str) -> None:
    scores = scorer.score(["How are you feeling today?", ""], [response, response])
    for m in MECHANISMS:
        assert np.isfinite(scores.probs[m]).all()
        np.testing.assert_allclose(scores.probs[m].sum(axis=1), 1.0, atol=1e-6)


def test_very_long_texts_are_truncated_by_the_encoding_rule(scorer: EmpathyScorer) -> None:
    tail = "Did you talk to anyone about how you feel?"
    long_context = " ".join(["blah"] * 10_000) + " " + tail
    long_response = tail + " " + " ".join(["blah"] * 10_000)
    # A context keeps its last tokens and a response its first, so whatever lies beyond the
    # limits does not change the score.
    a = scorer.score([long_context], [long_response])
    b = scorer.score(["word " * 5_000 + long_context], [long_response + " other" * 5_000])
    for m in MECHANISMS:
        np.testing.assert_allclose(a.probs[m], b.probs[m], atol=1e-6)


def test_empty_input_gives_empty_scores(scorer: EmpathyScorer) -> None:
    scores = scorer.score([], [])
    assert len(scores) == 0
    for m in MECHANISMS:
        assert scores.probs[m].shape == (0, 3) and scores.levels[m].shape == (0,)
    assert all(v.shape == (0,) for v in scores.to_columns().values())


def test_mismatched_lengths_and_non_text_are_errors(scorer: EmpathyScorer) -> None:
    with pytest.raises(ValueError, match="2 contexts but 1 responses"):
        scorer.score(["a", "b"], ["c"])
    with pytest.raises(TypeError, match=r"responses\[1\] is NoneType"):
        scorer.score(["a", "b"], ["c", None])  # type: ignore[list-item]


def test_missing_subfolder_names_it_and_the_fix(identifiers_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "identifiers"
    shutil.copytree(identifiers_dir / "ER", partial / "ER")
    shutil.copytree(identifiers_dir / "EX", partial / "EX")
    with pytest.raises(ModelSourceError, match=r"no IP/ identifier.*emprl identifiers train"):
        EmpathyScorer.from_folder(partial, max_context_len=8, max_response_len=8)
    with pytest.raises(ModelSourceError, match=r"does not exist.*emprl identifiers train"):
        EmpathyScorer.from_folder(tmp_path / "nowhere", max_context_len=8, max_response_len=8)
    only_er = EmpathyScorer.from_folder(partial, max_context_len=8, max_response_len=8, mechanisms=("ER",))
    assert only_er.score(["hi"], ["hello"]).mechanisms == ("ER",)


def test_from_config_takes_lengths_and_batch_size(identifiers_dir: Path) -> None:
    cfg = IdentifiersConfig(max_context_len=17, max_response_len=9, score_batch_size=5)
    scorer = EmpathyScorer.from_config(identifiers_dir, cfg)
    assert (scorer.max_context_len, scorer.max_response_len, scorer.batch_size) == (17, 9, 5)
    assert scorer.device == torch.device("cpu")
    assert not any(model.training for model in scorer.identifiers.values())


def test_gold_logprob_is_log_of_gold_probability(scorer: EmpathyScorer) -> None:
    scores = scorer.score(*pairs(9))
    rng = np.random.default_rng(0)
    gold = {m: rng.integers(0, 3, size=9) for m in MECHANISMS}
    logp = scores.gold_logprob(gold)
    for m in MECHANISMS:
        expected = np.log(scores.probs[m][np.arange(9), gold[m]])
        np.testing.assert_allclose(logp[m], expected, rtol=1e-5, atol=1e-6)
        assert (logp[m] <= 0).all()
    with pytest.raises(ValueError, match=r"gold\[ER\]\[0\]=3 is not a level"):
        scores.gold_logprob({**gold, "ER": np.full(9, 3)})
    with pytest.raises(KeyError, match="no gold levels for mechanism IP"):
        scores.gold_logprob({"ER": gold["ER"]})


def test_gold_logprob_is_exact_for_extreme_logits() -> None:
    scores = LevelScores.from_logits({"ER": torch.tensor([[200.0, 0.0, -200.0]])})
    assert scores.probs["ER"][0, 2] == 0.0  # underflows as a probability ...
    np.testing.assert_allclose(scores.gold_logprob({"ER": np.array([2])})["ER"], [-400.0])  # ... not as a log


def test_columns_round_trip(scorer: EmpathyScorer) -> None:
    scores = scorer.score(*pairs(6))
    columns = scores.to_columns()
    assert (
        list(columns)
        == level_columns()
        == [f"{m}_{s}" for m in ("er", "ip", "ex") for s in ("level", "p0", "p1", "p2")]
    )
    np.testing.assert_array_equal(columns["ip_p2"], scores.probs["IP"][:, 2])
    back = LevelScores.from_columns(columns)
    for m in MECHANISMS:
        np.testing.assert_array_equal(back.probs[m], scores.probs[m])
        np.testing.assert_array_equal(back.levels[m], scores.levels[m])
        np.testing.assert_allclose(back.logprobs[m], scores.logprobs[m], atol=1e-5)


def test_concat_and_validation() -> None:
    a = LevelScores.from_logits({"ER": np.zeros((2, 3)), "IP": np.ones((2, 3))})
    both = LevelScores.concat([a, LevelScores.empty(("ER", "IP")), a])
    assert len(both) == 4
    with pytest.raises(ValueError, match="mechanisms"):
        LevelScores.concat([a, LevelScores.empty()])
    with pytest.raises(ValueError, match="shapes"):
        LevelScores.from_logits({"ER": np.zeros((2, 3)), "IP": np.zeros((3, 3))})


def test_scorer_worker_scores_a_ray_data_batch_in_process(identifiers_dir: Path) -> None:
    from actors.inference.scorer import IdentifierScorerWorker

    cfg = IdentifiersConfig(max_context_len=MAX_CONTEXT, max_response_len=MAX_RESPONSE, score_batch_size=4)
    worker = IdentifierScorerWorker(str(identifiers_dir), cfg, torch_threads=1)
    contexts, responses = pairs(7)
    batch = {
        "context": np.array(contexts, dtype=object),
        "response": np.array(responses),
        "row": np.arange(7),
    }
    out = worker(batch)
    assert list(out) == ["context", "response", "row", *level_columns()]
    expected = worker.score(contexts, responses).to_columns()
    for name, values in expected.items():
        np.testing.assert_array_equal(out[name], values)
    np.testing.assert_array_equal(out["row"], np.arange(7))
    with pytest.raises(KeyError, match="no 'response' column"):
        worker({"context": batch["context"]})
