"""GPU checks (skipped without CUDA): packed teacher-forced passes and the top-k sampler on CUDA, where
attention with a block mask takes other SDPA kernels than on CPU."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ModelConfig, RolloutConfig
from pipeline.generation import encode_prompts, sample_responses
from pipeline.models import build_policy, train_tokenizer
from pipeline.ppo.iteration import response_forward

TEXTS = [
    "I just got a new puppy and I am so happy about it",
    "My car broke down on the way to work this morning",
    "I failed my exam even though I studied for weeks and weeks",
    "We are moving",
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_pass_and_sampler_match_the_padded_pass_on_cuda(dtype: torch.dtype) -> None:
    tokenizer = train_tokenizer(TEXTS * 4, 400)
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=400, d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4
    )
    model = build_policy(cfg, tokenizer).cuda().eval()
    prompts = encode_prompts(tokenizer, TEXTS, max_source_len=32, index=range(4), gold_levels={}, seed=3)
    prompts = type(prompts)(**{**prompts.__dict__, "prompt_ids": prompts.prompt_ids.cuda(),
                               "prompt_mask": prompts.prompt_mask.cuda()})  # fmt: skip
    rollout = RolloutConfig(min_new_tokens=2, max_new_tokens=8)
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 0.1, "rtol": 0.05}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        rollouts = sample_responses(model, tokenizer, prompts, rollout)
        logprobs, values, _ = response_forward(
            model, prompts.prompt_ids, prompts.prompt_mask, rollouts.response_ids,
            start_id=int(model.config.decoder_start_token_id), response_mask=rollouts.response_mask,
        )  # fmt: skip
        start = int(model.config.decoder_start_token_id)
        decoder = torch.cat(
            [torch.full_like(rollouts.response_ids[:, :1], start), rollouts.response_ids[:, :-1]], 1
        )
        logits, padded_values = model(prompts.prompt_ids, prompts.prompt_mask, decoder)
        padded = (
            torch.log_softmax(logits.float(), -1).gather(-1, rollouts.response_ids.unsqueeze(-1)).squeeze(-1)
        )
    m = rollouts.response_mask.bool()
    assert rollouts.values is not None and rollouts.response_ids.is_cuda
    torch.testing.assert_close(logprobs[m], padded[m], **tol)
    torch.testing.assert_close(values[m], padded_values.float()[m], **tol)
    torch.testing.assert_close(rollouts.logprobs[m], padded[m], **tol)
    torch.testing.assert_close(rollouts.values[m], padded_values.float()[m], **tol)
