"""The pure pieces of one PPO iteration: prompt schedule, mini-batch plan, sampling, teacher-forced
log-probs, the train batch and the data-parallel loss scaling (sharded == global)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from tiny import POLICY

from pipeline.config import PPOConfig, RewardConfig, RolloutConfig
from pipeline.generation import encode_prompts, response_mask, sample_responses, sampling_distribution
from pipeline.models import PolicyWithValueHead, build_policy, train_tokenizer, use_fastest_attention
from pipeline.models.policy import packed_encoder_states
from pipeline.ppo.advantages import gae, masked_whiten
from pipeline.ppo.experience import RewardScores, Rollouts, TrainBatch, moved_to, pad_stack, split_evenly
from pipeline.ppo.iteration import (
    build_train_batch,
    iteration_lr_lambda,
    minibatch_plan,
    ppo_loss,
    prompt_rows,
    response_forward,
)
from pipeline.ppo.rewards import RunningMoments, kl_shaped_rewards, normalize_scores

pytestmark = pytest.mark.unit

TEXTS = [
    "I just got a new puppy and I am so happy about it",
    "My car broke down on the way to work this morning",
    "I failed my exam even though I studied for weeks",
    "We are moving to a new city next month",
    "My best friend forgot my birthday again",
    "I finally finished the marathon after months of training",
]
MODEL = POLICY
ROLLOUT = RolloutConfig(min_new_tokens=2, max_new_tokens=6)
TRAIN_RESPONSES = torch.randint(5, MODEL.vocab_size, (6, 5), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def policy() -> tuple[PolicyWithValueHead, object]:
    tokenizer = train_tokenizer(TEXTS * 4, MODEL.vocab_size)
    torch.manual_seed(0)
    model = build_policy(MODEL, tokenizer)
    model.eval()
    return model, tokenizer


def _prompts(tokenizer: object, rows: list[int], seed: int = 7):  # type: ignore[no-untyped-def]
    return encode_prompts(
        tokenizer,  # type: ignore[arg-type]
        [TEXTS[i] for i in rows],
        max_source_len=16,
        index=rows,
        gold_levels={"ER": np.zeros(len(rows), dtype=np.int64)},
        seed=seed,
    )


def test_prompt_rows_cover_each_row_once_per_epoch_and_are_reproducible() -> None:
    stream = np.concatenate([prompt_rows(i, batch_size=4, num_rows=10, seed=3) for i in range(1, 6)])
    assert sorted(stream[:10].tolist()) == list(range(10))  # epoch 0, across an iteration boundary
    assert sorted(stream[10:20].tolist()) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:20])  # a fresh permutation per epoch
    assert np.array_equal(prompt_rows(3, batch_size=4, num_rows=10, seed=3), stream[8:12])
    with pytest.raises(ValueError, match="iteration"):
        prompt_rows(0, batch_size=4, num_rows=10, seed=3)


def test_minibatch_plan_is_a_permutation_per_epoch() -> None:
    plan = minibatch_plan(8, mini_batch_size=4, epochs=3, seed=1)
    assert len(plan) == 6 and all(len(mb) == 4 for mb in plan)
    for e in range(3):
        assert sorted(np.concatenate(plan[2 * e : 2 * e + 2]).tolist()) == list(range(8))
    assert [mb.tolist() for mb in plan] == [
        mb.tolist() for mb in minibatch_plan(8, mini_batch_size=4, epochs=3, seed=1)
    ]
    with pytest.raises(ValueError, match="multiple"):
        minibatch_plan(10, mini_batch_size=4, epochs=1, seed=1)


def test_lr_decays_linearly_once_per_iteration() -> None:
    f = iteration_lr_lambda(total_steps=4, updates_per_iteration=3, schedule="linear")
    assert [f(u) for u in range(7)] == [1.0, 1.0, 1.0, 0.75, 0.75, 0.75, 0.5]
    assert iteration_lr_lambda(total_steps=4, updates_per_iteration=3, schedule="constant")(11) == 1.0


def test_response_mask_ends_at_the_first_eos() -> None:
    ids = torch.tensor([[5, 6, 1, 0, 0], [5, 1, 7, 1, 0], [5, 6, 7, 8, 9]])
    assert response_mask(ids, eos_id=1).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_sampling_depends_only_on_weights_prompts_and_seed(
    policy: tuple[PolicyWithValueHead, object],
) -> None:
    model, tokenizer = policy
    a = sample_responses(model.policy, tokenizer, _prompts(tokenizer, [0, 1, 2]), ROLLOUT)  # type: ignore[arg-type]
    torch.manual_seed(12345)  # the global RNG state before the call does not matter
    b = sample_responses(model.policy, tokenizer, _prompts(tokenizer, [0, 1, 2]), ROLLOUT)  # type: ignore[arg-type]
    assert torch.equal(a.response_ids, b.response_ids) and a.responses == b.responses
    lengths = a.response_mask.sum(-1)
    assert bool((lengths >= ROLLOUT.min_new_tokens).all()) and bool((lengths <= ROLLOUT.max_new_tokens).all())
    assert bool((a.response_ids[a.response_mask == 0] == tokenizer.pad_token_id).all())  # type: ignore[attr-defined]


def test_sampler_logprobs_and_values_equal_the_teacher_forced_pass(
    policy: tuple[PolicyWithValueHead, object],
) -> None:
    model, tokenizer = policy
    rollouts = sample_responses(model, tokenizer, _prompts(tokenizer, [3, 4, 0]), ROLLOUT)  # type: ignore[arg-type]
    with torch.no_grad():
        logprobs, values, _ = response_forward(
            model,
            rollouts.prompts.prompt_ids,
            rollouts.prompts.prompt_mask,
            rollouts.response_ids,
            start_id=model.config.decoder_start_token_id,
        )
    m = rollouts.response_mask.bool()
    # what PPO's learner would recompute: the same numbers from the sampler's own decoder states
    assert rollouts.values is not None and rollouts.values.shape == rollouts.response_ids.shape
    torch.testing.assert_close(logprobs[m], rollouts.logprobs[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values[m], rollouts.values[m], atol=1e-5, rtol=1e-5)
    assert bool((rollouts.values[~m] == 0).all()) and bool((rollouts.logprobs[~m] == 0).all())
    # a bare T5 (evaluation) samples the same responses, without values
    bare = sample_responses(model.policy, tokenizer, _prompts(tokenizer, [3, 4, 0]), ROLLOUT)  # type: ignore[arg-type]
    assert bare.values is None and torch.equal(bare.response_ids, rollouts.response_ids)


def test_packed_encoder_equals_the_padded_encoder(policy: tuple[PolicyWithValueHead, object]) -> None:
    model, tokenizer = policy
    encoder = model.policy.get_encoder()
    prompts = _prompts(tokenizer, [0, 1, 2, 3, 4, 5])
    ids, mask = prompts.prompt_ids, prompts.prompt_mask
    lengths = mask.sum(1)
    assert int(lengths.min()) < ids.shape[1]  # some padding to skip
    with torch.no_grad():
        padded = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        for min_row_tokens in (1, 16, 1000):  # one prompt per row ... all prompts in one row
            packed = packed_encoder_states(encoder, ids, mask, min_row_tokens=min_row_tokens)
            real = mask.bool()
            torch.testing.assert_close(packed[real], padded[real], atol=1e-5, rtol=1e-5)
            assert bool((packed[~real] == 0).all())
        # left padding: each prompt's tokens are still contiguous
        left_ids = torch.stack(
            [torch.roll(r, int(ids.shape[1] - n)) for r, n in zip(ids, lengths, strict=True)]
        )
        left_mask = torch.stack(
            [torch.roll(r, int(ids.shape[1] - n)) for r, n in zip(mask, lengths, strict=True)]
        )
        left = packed_encoder_states(encoder, left_ids, left_mask, min_row_tokens=16)
        torch.testing.assert_close(left[left_mask.bool()], padded[real], atol=1e-5, rtol=1e-5)
    # gradients flow through the packing to every real position
    model.zero_grad()
    packed_encoder_states(encoder, ids, mask).sum().backward()
    assert model.policy.shared.weight.grad is not None and bool(
        model.policy.shared.weight.grad.abs().sum() > 0
    )
    model.zero_grad()


@pytest.mark.parametrize("min_row_tokens", [1, 24, 1000])
def test_packed_pairs_equal_the_padded_forward_values_and_gradients(
    policy: tuple[PolicyWithValueHead, object], min_row_tokens: int
) -> None:
    model, tokenizer = policy
    prompts = _prompts(tokenizer, [0, 1, 2, 3, 4, 5])
    torch.manual_seed(1)
    responses = torch.randint(5, MODEL.vocab_size, (6, 7))
    lengths = torch.tensor([7, 3, 5, 1, 7, 2])
    mask = (torch.arange(7) < lengths.unsqueeze(1)).long()
    start = int(model.config.decoder_start_token_id)
    decoder = torch.cat([torch.full((6, 1), start), responses[:, :-1]], dim=1)

    def padded() -> tuple[torch.Tensor, torch.Tensor]:
        logits, values = model(prompts.prompt_ids, prompts.prompt_mask, decoder)
        logprobs = torch.log_softmax(logits, -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
        return logprobs * mask, values * mask

    def packed() -> tuple[torch.Tensor, torch.Tensor]:
        out = model.packed(
            prompts.prompt_ids, prompts.prompt_mask, decoder, lengths, min_row_tokens=min_row_tokens
        )
        logprobs = (
            torch.log_softmax(out.logits, -1).gather(-1, out.layout.pack(responses).unsqueeze(-1)).squeeze(-1)
        )
        return out.layout.unpack(logprobs), out.layout.unpack(out.values)

    grads = []
    for run in (padded, packed):
        model.zero_grad()
        logprobs, values = run()
        (logprobs.sum() + values.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if run is padded:
            expected = (logprobs.detach(), values.detach())
        else:
            torch.testing.assert_close(logprobs.detach(), expected[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(values.detach(), expected[1], atol=1e-5, rtol=1e-5)
            assert bool((logprobs[mask == 0] == 0).all())
    model.zero_grad()
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_cpu_attention_kernel_gives_the_same_passes_and_samples(
    policy: tuple[PolicyWithValueHead, object],
) -> None:
    model, tokenizer = policy
    prompts = _prompts(tokenizer, [0, 1, 2, 3, 4, 5])
    runs = {}
    for device in ("cuda", "cpu"):  # only the kernel choice: the model stays on the CPU
        use_fastest_attention(model, device)
        runs[model.config._attn_implementation] = (
            response_forward(model, prompts.prompt_ids, prompts.prompt_mask, TRAIN_RESPONSES, start_id=0),
            sample_responses(model, tokenizer, prompts, ROLLOUT),  # type: ignore[arg-type]
        )
    use_fastest_attention(model, "cuda")
    assert sorted(runs) == ["eager", "sdpa"]
    (eager_lp, eager_v, _), eager_sample = runs["eager"]
    (sdpa_lp, sdpa_v, _), sdpa_sample = runs["sdpa"]
    torch.testing.assert_close(eager_lp, sdpa_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager_v, sdpa_v, atol=1e-5, rtol=1e-5)
    assert torch.equal(eager_sample.response_ids, sdpa_sample.response_ids)
    torch.testing.assert_close(eager_sample.logprobs, sdpa_sample.logprobs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("top_k", "top_p", "step"), [(20, 1.0, 0), (20, 1.0, 5), (5, 0.8, 3), (0, 0.9, 3), (0, 1.0, 0)]
)
def test_sampling_distribution_is_hugging_faces(top_k: int, top_p: float, step: int) -> None:
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    cfg = RolloutConfig(top_k=top_k, top_p=top_p, temperature=0.9, min_new_tokens=2, max_new_tokens=8)
    torch.manual_seed(0)
    logits = 3 * torch.randn(4, 50)
    logits[1, 1] = 20.0  # eos most likely: barred before min_new_tokens
    hf = LogitsProcessorList([MinNewTokensLengthLogitsProcessor(1, cfg.min_new_tokens, eos_token_id=1)])
    hf.append(TemperatureLogitsWarper(cfg.temperature))
    if top_k:
        hf.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        hf.append(TopPLogitsWarper(top_p))
    expected = torch.softmax(hf(torch.zeros(4, 1 + step, dtype=torch.long), logits.clone()), dim=-1)
    probs, index = sampling_distribution(logits, cfg, step=step, eos=1)
    ours = torch.zeros_like(expected).scatter(-1, index, probs)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


def test_concat_repads_and_keeps_row_order(policy: tuple[PolicyWithValueHead, object]) -> None:
    model, tokenizer = policy
    parts = [
        sample_responses(model.policy, tokenizer, _prompts(tokenizer, rows, seed=s), ROLLOUT)  # type: ignore[arg-type]
        for rows, s in (([0, 1], 1), ([2], 2), ([3, 4, 5], 3))
    ]
    whole = Rollouts.concat(parts)
    assert whole.prompts.index.tolist() == [0, 1, 2, 3, 4, 5]
    assert whole.responses == tuple(r for p in parts for r in p.responses)
    row = 0
    for p in parts:
        for i in range(len(p)):
            n = int(p.response_mask[i].sum())
            assert torch.equal(whole.response_ids[row, :n], p.response_ids[i, :n])
            assert int(whole.response_mask[row].sum()) == n
            row += 1
    with pytest.raises(ValueError, match="versions"):
        Rollouts.concat([parts[0], Rollouts(**{**parts[1].__dict__, "version": 5})])


def test_moved_to_moves_every_tensor_field_nested_ones_included(
    policy: tuple[PolicyWithValueHead, object],
) -> None:
    # a rollout worker hands its results back with moved_to(rollouts, "cpu"): no tensor field (the
    # values among them) may stay on its GPU. The meta device stands in for the GPU here.
    model, tokenizer = policy
    rollouts = sample_responses(model, tokenizer, _prompts(tokenizer, [0, 1], seed=1), ROLLOUT)  # type: ignore[arg-type]
    assert rollouts.values is not None
    moved = moved_to(rollouts, "meta")
    tensors = [getattr(moved, f.name) for f in fields(moved)] + [
        getattr(moved.prompts, f.name) for f in fields(moved.prompts)
    ]
    assert {t.device.type for t in tensors if isinstance(t, torch.Tensor)} == {"meta"}
    assert len([t for t in tensors if isinstance(t, torch.Tensor)]) == 6
    assert moved.responses == rollouts.responses and moved.prompts.contexts == rollouts.prompts.contexts
    assert moved.prompts.index is rollouts.prompts.index and moved.version == rollouts.version
    assert rollouts.values.device.type == "cpu"  # the original is unchanged


def test_pad_stack_and_split_evenly() -> None:
    out = pad_stack([torch.ones(1, 2), torch.ones(2, 3)], value=0.0)
    assert out.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 1]]
    assert split_evenly(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert split_evenly([1], 3) == [[1], [], []]


def _scored(batch: int, width: int, seed: int = 0) -> tuple[Rollouts, RewardScores, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    mask = (torch.arange(width) < lengths[:, None]).long()
    rollouts = Rollouts(
        prompts=encode_prompts(
            train_tokenizer(TEXTS, 400), (TEXTS * 2)[:batch], max_source_len=8, index=list(range(batch)),
            gold_levels={"ER": np.zeros(batch, dtype=np.int64)}, seed=0,
        ),
        response_ids=torch.randint(2, 50, (batch, width), generator=g) * mask,
        response_mask=mask,
        logprobs=torch.zeros(batch, width),
        responses=tuple("x" for _ in range(batch)),
        version=0,
    )  # fmt: skip
    scores = RewardScores(
        scores=torch.rand(batch, generator=g),
        gold_prob={"ER": torch.rand(batch, generator=g)},
        hit={"ER": torch.ones(batch)},
        levels={"ER": torch.zeros(batch, dtype=torch.long)},
    )
    tensors = {
        "ref": -torch.rand(batch, width, generator=g) * 3,
        "old": -torch.rand(batch, width, generator=g) * 3,
        "values": torch.randn(batch, width, generator=g),
    }
    return rollouts, scores, tensors


def test_train_batch_is_the_composition_of_the_pure_steps() -> None:
    rollouts, scores, t = _scored(6, 5)
    ppo, reward = PPOConfig(), RewardConfig()
    batch, stats = build_train_batch(
        rollouts, scores, ref_logprobs=t["ref"], old_logprobs=t["old"], old_values=t["values"],
        kl_coef=0.2, ppo=ppo, reward=reward, moments=RunningMoments(),
    )  # fmt: skip
    mask = rollouts.response_mask
    norm = normalize_scores(scores.scores.double(), RunningMoments(), normalize=True, scale=True).float()
    rewards, kl = kl_shaped_rewards(norm, t["old"], t["ref"], mask, kl_coef=0.2, estimator="k1")
    rewards = masked_whiten(rewards, mask, shift_mean=False)
    adv, ret = gae(rewards, t["values"] * mask, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(batch.advantages, masked_whiten(adv, mask))
    torch.testing.assert_close(batch.returns, ret)
    assert stats["rollout/kl"] == pytest.approx(float(kl.sum(-1).mean()))
    assert stats["reward/score"] == pytest.approx(float(scores.scores.mean()))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_every_estimator_also_reports_the_k3_kl_sweeps_compare(estimator: str) -> None:
    rollouts, scores, t = _scored(6, 5, seed=2)
    ppo = PPOConfig(kl_estimator=estimator)  # type: ignore[arg-type]
    _, stats = build_train_batch(
        rollouts, scores, ref_logprobs=t["ref"], old_logprobs=t["old"], old_values=t["values"],
        kl_coef=0.2, ppo=ppo, reward=RewardConfig(), moments=RunningMoments(),
    )  # fmt: skip
    m = rollouts.response_mask.float()
    ratio = (t["ref"] - t["old"]).double()  # log(π_ref / π) per token, by hand
    k3 = ((ratio.exp() - 1 - ratio) * m).sum(-1).mean()
    k1 = ((t["old"] - t["ref"]) * m).sum(-1).mean()
    assert stats["rollout/kl_k3"] == pytest.approx(float(k3), rel=1e-5) and stats["rollout/kl_k3"] > 0
    if estimator == "k1":
        assert stats["rollout/kl"] == pytest.approx(float(k1), rel=1e-5)
    if estimator == "k3":
        assert stats["rollout/kl"] == pytest.approx(stats["rollout/kl_k3"])


def test_without_kl_normalisation_or_whitening_returns_are_the_score_reward_to_go() -> None:
    rollouts, scores, t = _scored(4, 6, seed=1)
    ppo = PPOConfig(gamma=1.0, lam=1.0)
    reward = RewardConfig(normalize_scores=False, scale_scores=False, whiten_rewards=False)
    batch, _ = build_train_batch(
        rollouts, scores, ref_logprobs=t["ref"], old_logprobs=t["old"], old_values=torch.zeros(4, 6),
        kl_coef=0.0, ppo=ppo, reward=reward, moments=RunningMoments(),
    )  # fmt: skip
    expected = scores.scores[:, None] * rollouts.response_mask
    torch.testing.assert_close(batch.returns, expected)


def test_sharded_loss_gradients_equal_the_whole_mini_batch(
    policy: tuple[PolicyWithValueHead, object],
) -> None:
    model, _ = policy
    rollouts, scores, t = _scored(8, 5, seed=2)
    batch, _ = build_train_batch(
        rollouts, scores, ref_logprobs=t["ref"], old_logprobs=t["old"], old_values=t["values"],
        kl_coef=0.1, ppo=PPOConfig(), reward=RewardConfig(), moments=RunningMoments(),
    )  # fmt: skip
    cfg, start = PPOConfig(), model.config.decoder_start_token_id
    tokens = float(batch.response_mask.sum())

    def grads(shard: TrainBatch, world: int) -> list[torch.Tensor]:
        model.zero_grad()
        loss, _ = ppo_loss(model, shard, cfg=cfg, start_id=start, global_tokens=tokens, world_size=world)
        loss.backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]

    whole = grads(batch.select(range(8)), 1)
    shards = [grads(batch.select(rows), 2) for rows in (range(0, 4), range(4, 8))]
    for w, a, b in zip(whole, *shards, strict=True):
        torch.testing.assert_close((a + b) / 2, w, atol=1e-6, rtol=1e-5)


def test_select_trims_padding_columns() -> None:
    rollouts, scores, t = _scored(4, 6, seed=3)
    batch, _ = build_train_batch(
        rollouts, scores, ref_logprobs=t["ref"], old_logprobs=t["old"], old_values=t["values"],
        kl_coef=0.1, ppo=PPOConfig(), reward=RewardConfig(), moments=RunningMoments(),
    )  # fmt: skip
    row = int(batch.response_mask.sum(-1).argmin())
    one = batch.select([row])
    assert one.response_ids.shape[1] == int(batch.response_mask[row].sum())
    assert one.prompt_ids.shape[1] == int(batch.prompt_mask[row].sum())
    assert torch.equal(one.advantages[0], batch.advantages[row, : one.response_ids.shape[1]])
