"""`sample_each`: per-request settings and seeded generators, independent of batch-mates and of the global RNG."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

from pipeline.config import ModelConfig
from pipeline.generation import SamplingSettings, encode_prompts, sample_each
from pipeline.models import build_policy, build_policy_tokenizer

pytestmark = pytest.mark.unit

TEXTS = [
    "i lost my job today and i feel bad about it",
    "we went to the beach",
    "my dog died last week, it was so sad and i miss him",
    "hello there how are you",
] * 4
SHAPE = ModelConfig(
    vocab_size=600, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_decoder_layers=1, num_heads=2,
    max_source_len=48, max_target_len=16,
)  # fmt: skip


@pytest.fixture(scope="module")
def policy() -> tuple[T5ForConditionalGeneration, PreTrainedTokenizerBase]:
    tokenizer = build_policy_tokenizer(SHAPE, TEXTS)
    torch.manual_seed(0)
    model = build_policy(SHAPE, tokenizer).policy
    model.train(False)
    return model, tokenizer


def settings(seed: int, **changes: float) -> SamplingSettings:
    base = {
        "temperature": 1.5,
        "top_k": 0,
        "top_p": 1.0,
        "min_new_tokens": 1,
        "max_new_tokens": 10,
        "seed": seed,
    }
    return SamplingSettings(**{**base, **changes})  # type: ignore[arg-type]


def test_a_seed_reproduces_its_response_alone_or_batched(
    policy: tuple[T5ForConditionalGeneration, PreTrainedTokenizerBase],
) -> None:
    model, tok = policy
    alone = [sample_each(model, tok, [TEXTS[i]], [settings(100 + i)], max_source_len=48)[0] for i in range(4)]
    mates = [settings(7, top_k=5), settings(8, top_p=0.5), settings(9, max_new_tokens=3)]
    for i in range(4):
        batch = sample_each(
            model, tok, [*TEXTS[4:7], TEXTS[i]], [*mates, settings(100 + i)], max_source_len=48
        )
        assert batch[-1] == alone[i]
    reordered = sample_each(
        model, tok, TEXTS[:4][::-1], [settings(103 - i) for i in range(4)], max_source_len=48
    )
    assert reordered[::-1] == alone
    assert len(set(alone)) > 1  # sampling, not a constant


def test_different_seeds_differ_and_the_global_rng_is_untouched(
    policy: tuple[T5ForConditionalGeneration, PreTrainedTokenizerBase],
) -> None:
    model, tok = policy
    state = torch.random.get_rng_state()
    responses = sample_each(model, tok, [TEXTS[0]] * 8, [settings(s) for s in range(8)], max_source_len=48)
    assert len(set(responses)) > 1
    assert torch.equal(state, torch.random.get_rng_state())


def test_top_k_1_is_greedy_decoding(
    policy: tuple[T5ForConditionalGeneration, PreTrainedTokenizerBase],
) -> None:
    model, tok = policy
    mine = sample_each(
        model, tok, TEXTS[:4], [settings(s, top_k=1, max_new_tokens=8) for s in range(4)], max_source_len=48
    )
    prompts = encode_prompts(tok, TEXTS[:4], max_source_len=48, index=range(4), gold_levels={}, seed=0)
    out = model.generate(
        input_ids=prompts.prompt_ids, attention_mask=prompts.prompt_mask, do_sample=False, max_new_tokens=8,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    assert mine == [t.strip() for t in tok.batch_decode(out[:, 1:], skip_special_tokens=True)]


def test_empty_batch_and_mismatched_settings(
    policy: tuple[T5ForConditionalGeneration, PreTrainedTokenizerBase],
) -> None:
    model, tok = policy
    assert sample_each(model, tok, [], [], max_source_len=48) == []
    with pytest.raises(ValueError, match="settings"):
        sample_each(model, tok, TEXTS[:2], [settings(0)], max_source_len=48)


def test_an_abandoned_row_stops_and_its_batch_mates_are_unchanged(
    policy: tuple[T5ForConditionalGeneration, PreTrainedTokenizerBase],
) -> None:
    from pipeline.generation import StepSampler

    model, tok = policy
    alone = sample_each(model, tok, [TEXTS[1]], [settings(4, min_new_tokens=10)], max_source_len=48)[0]
    steps = 0
    sampler = StepSampler(
        model, tok, [TEXTS[0], TEXTS[1]], [settings(3, min_new_tokens=10), settings(4, min_new_tokens=10)],
        max_source_len=48, abandoned=[lambda: steps >= 2, lambda: False],
    )  # fmt: skip
    for _ in sampler:
        steps += 1
    assert len(sampler.tokens[0]) == 2  # stopped at the step after it was abandoned
    assert sampler.results()[1].text == alone and len(sampler.tokens[1]) == 10
