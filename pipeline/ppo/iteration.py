"""One PPO iteration as pure functions: prompt schedule, seeds, teacher-forced log-probs and values,
the train batch (score normalisation → KL-shaped rewards → GAE → whitening), the mini-batch plan and
the clipped PPO loss of a mini-batch shard. Follows trl 0.9.6 ``PPOTrainer.step`` except that the
gradient norm is clipped on every update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.config import PPOConfig, RewardConfig
from pipeline.models.policy import PackedOutput, PolicyWithValueHead
from pipeline.ppo.advantages import gae, masked_mean, masked_whiten
from pipeline.ppo.experience import IntArray, RewardScores, Rollouts, TrainBatch
from pipeline.ppo.kl import kl_estimate
from pipeline.ppo.losses import explained_variance, policy_loss, value_loss
from pipeline.ppo.rewards import RunningMoments, kl_shaped_rewards, normalize_scores


def derive_seed(*parts: int) -> int:
    """A 31-bit seed mixed from integers (run seed, iteration, chunk...) with numpy's SeedSequence."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


def prompt_rows(iteration: int, *, batch_size: int, num_rows: int, seed: int) -> IntArray:
    """Dataset rows of iteration ``iteration`` (1-based): consecutive slices of per-epoch permutations.

    Position ``p`` of the stream is row ``perm_e[p mod N]`` with ``e = p // N`` and ``perm_e`` a
    permutation seeded by ``(seed, e)``, so the data position is a function of the iteration alone
    and resume is exact without saved sampler state.
    """
    if iteration < 1 or num_rows < 1:
        raise ValueError(f"prompt_rows: iteration and num_rows must be >= 1; got {iteration}, {num_rows}")
    start = (iteration - 1) * batch_size
    positions = np.arange(start, start + batch_size)
    epochs = positions // num_rows
    rows = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng(derive_seed(seed, int(epoch))).permutation(num_rows)
        sel = epochs == epoch
        rows[sel] = perm[positions[sel] % num_rows]
    return rows


def decoder_inputs(response_ids: Tensor, *, start_id: int) -> Tensor:
    """(B, T_r) responses → (B, T_r) decoder inputs: the start token, then the responses shifted right."""
    start = torch.full_like(response_ids[:, :1], start_id)
    return torch.cat([start, response_ids[:, :-1]], dim=1)


def response_forward(
    model: PolicyWithValueHead | nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    *,
    start_id: int,
    response_mask: Tensor | None = None,
    entropy: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Teacher-forced pass: ``(logprobs, values, entropy)`` of each response token, each (B, T_r).

    ``logprobs`` is ``log π(r_t | c, r_<t)`` in float32, ``values`` the value of the state before
    ``r_t``, ``entropy`` (only when asked, without gradient) the policy's entropy at that state. The
    pass runs on (prompt, response) pairs packed without padding (:meth:`PolicyWithValueHead.packed`,
    the same numbers up to float rounding); positions past a row's ``response_mask`` are 0 (all
    ``T_r`` positions count when it is ``None``).
    """
    if response_mask is None:
        lengths = torch.full((response_ids.shape[0],), response_ids.shape[1], device=response_ids.device)
    else:
        lengths = response_mask.sum(dim=1)
    packed = cast(Callable[..., PackedOutput], model.packed)  # also through a DeepSpeed engine
    out = packed(prompt_ids, prompt_mask, decoder_inputs(response_ids, start_id=start_id), lengths)
    layout = out.layout
    vocab_logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # (R, N, V)
    targets = layout.pack(response_ids)
    logprobs = layout.unpack(vocab_logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    token_entropy = None
    if entropy:
        with torch.no_grad():
            token_entropy = layout.unpack(-(vocab_logprobs.exp() * vocab_logprobs).sum(dim=-1))
    return logprobs, layout.unpack(out.values.float()), token_entropy


def build_train_batch(
    rollouts: Rollouts,
    rewards: RewardScores,
    *,
    ref_logprobs: Tensor,
    old_logprobs: Tensor,
    old_values: Tensor,
    kl_coef: float,
    ppo: PPOConfig,
    reward: RewardConfig,
    moments: RunningMoments,
) -> tuple[TrainBatch, dict[str, float]]:
    """Scores → normalised scores → per-token KL-shaped rewards → (whitened) GAE → :class:`TrainBatch`.

    All token tensors ``(B, T_r)`` aligned with ``rollouts.response_ids``. ``moments`` is updated
    in place (running score statistics). Returns the batch and flat ``reward/`` and ``rollout/``
    statistics, where ``rollout/kl`` is the mean over responses of the summed per-token KL of the run's
    estimator (what the adaptive controller tracks, as in trl) and ``rollout/kl_k3`` the same sum of the k3
    estimate whatever the estimator (unbiased and ≥ 0: the one KL quantity sweeps compare across trials).
    """
    mask = rollouts.response_mask
    m = mask.float()
    scores = normalize_scores(
        rewards.scores.double(), moments, normalize=reward.normalize_scores, scale=reward.scale_scores
    ).float()
    token_rewards, kl = kl_shaped_rewards(
        scores, old_logprobs, ref_logprobs, mask, kl_coef=kl_coef, estimator=ppo.kl_estimator
    )
    if reward.whiten_rewards:
        token_rewards = masked_whiten(token_rewards, mask, shift_mean=False)
    values = old_values * m
    advantages, returns = gae(token_rewards, values, mask, gamma=ppo.gamma, lam=ppo.lam)
    advantages = masked_whiten(advantages, mask)
    batch = TrainBatch(
        prompt_ids=rollouts.prompts.prompt_ids,
        prompt_mask=rollouts.prompts.prompt_mask,
        response_ids=rollouts.response_ids,
        response_mask=mask,
        old_logprobs=old_logprobs * m,
        old_values=values,
        advantages=advantages,
        returns=returns,
        version=rollouts.version,
    )
    lengths = m.sum(-1)
    stats = {
        "reward/score": float(rewards.scores.mean()),
        "reward/score_std": float(rewards.scores.std()) if len(rewards) > 1 else 0.0,
        "reward/score_normalized": float(scores.mean()),
        "reward/running_mean": moments.mean,
        "reward/running_std": moments.std,
        "reward/token_reward": float(masked_mean(token_rewards, mask)),
        **{f"reward/{k}_gold_prob": float(v.mean()) for k, v in rewards.gold_prob.items()},
        **{f"reward/{k}_hit": float(v.mean()) for k, v in rewards.hit.items()},
        "rollout/kl": float(kl.sum(-1).mean()),
        "rollout/kl_k3": float((kl_estimate(old_logprobs, ref_logprobs, estimator="k3") * m).sum(-1).mean()),
        "rollout/kl_token": float(masked_mean(kl, mask)),
        "rollout/kl_coef": kl_coef,
        "rollout/response_len": float(lengths.mean()),
        "rollout/response_len_max": float(lengths.max()),
        "rollout/ended_with_eos": float(
            (rollouts.response_mask.sum(-1) < rollouts.response_mask.shape[1]).float().mean()
        ),
        "rollout/logprob": float(masked_mean(old_logprobs, mask)),
        "rollout/sampler_logprob_gap": float(((rollouts.logprobs - old_logprobs) * m).abs().max()),
        "ppo/value_mean": float(masked_mean(values, mask)),
        "ppo/return_mean": float(masked_mean(returns, mask)),
        "ppo/explained_variance": float(explained_variance(values, returns, mask)),
    }
    return batch, stats


def minibatch_plan(batch_size: int, *, mini_batch_size: int, epochs: int, seed: int) -> list[IntArray]:
    """Row indices of every mini-batch of every PPO epoch: a fresh seeded permutation per epoch, cut
    into ``batch_size // mini_batch_size`` consecutive mini-batches (trl 0.9.6 order)."""
    if batch_size % mini_batch_size:
        raise ValueError(
            f"minibatch_plan: batch {batch_size} is not a multiple of mini-batch {mini_batch_size}"
        )
    rng = np.random.default_rng(seed)
    plan = []
    for _ in range(epochs):
        perm = rng.permutation(batch_size).astype(np.int64)
        plan += [perm[i : i + mini_batch_size] for i in range(0, batch_size, mini_batch_size)]
    return plan


def ppo_loss(
    model: PolicyWithValueHead | nn.Module,
    shard: TrainBatch,
    *,
    cfg: PPOConfig,
    start_id: int,
    global_tokens: float,
    world_size: int,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped PPO loss of one rank's shard of a mini-batch, scaled for data-parallel averaging.

    ``L = L_clip + vf_coef · L_V``, each a token mean over the whole mini-batch. A rank holds
    ``n_r`` of its ``global_tokens`` tokens: its loss is its token mean times
    ``n_r / global_tokens · world_size``, so the gradient average over ranks equals the
    single-process gradient of the whole mini-batch.
    """
    mask = shard.response_mask
    logprobs, values, entropy = response_forward(
        model, shard.prompt_ids, shard.prompt_mask, shard.response_ids, start_id=start_id,
        response_mask=mask, entropy=True,
    )  # fmt: skip
    assert entropy is not None
    pg_loss, pg_stats = policy_loss(
        logprobs, shard.old_logprobs, shard.advantages, mask, clip_ratio=cfg.clip_ratio
    )
    vf_loss, vf_stats = value_loss(values, shard.old_values, shard.returns, mask, value_clip=cfg.value_clip)
    loss = pg_loss + cfg.vf_coef * vf_loss
    local_tokens = float(mask.sum())
    scaled = loss * (local_tokens / global_tokens * world_size)
    with torch.no_grad():
        ratio = torch.exp(logprobs - shard.old_logprobs)
        stats = {
            "ppo/loss": float(loss),
            "ppo/policy_loss": float(pg_loss),
            "ppo/value_loss": float(vf_loss),
            "ppo/entropy": float(masked_mean(entropy, mask)),
            **{f"ppo/{k}": float(v) for k, v in {**pg_stats, **vf_stats}.items()},
            "ppo/ratio_mean": float(masked_mean(ratio, mask)),
            "ppo/ratio_max_dev": float(((ratio - 1).abs() * mask).max()) if mask.any() else 0.0,
            "ppo/tokens": local_tokens,
        }
    return scaled, stats


def iteration_lr_lambda(
    *, total_steps: int, updates_per_iteration: int, schedule: str
) -> Callable[[int], float]:
    """LR factor per optimiser update: constant, or linear decay stepped once per PPO iteration
    (trl steps the scheduler after each ``step()``), from 1 at iteration 1 to ``1/total_steps`` at the last."""

    def factor(update: int) -> float:
        if schedule == "constant":
            return 1.0
        done = update // updates_per_iteration
        return max(0.0, 1.0 - done / total_steps)

    return factor


def average_stats(rows: list[dict[str, float]]) -> dict[str, float]:
    """Token-weighted mean of per-shard stats (weights from each row's ``ppo/tokens``); ``ppo/tokens`` summed."""
    if not rows:
        return {}
    weights = np.array([r.get("ppo/tokens", 1.0) for r in rows], dtype=np.float64)
    out = {k: float(np.average([r[k] for r in rows], weights=weights)) for k in rows[0] if k != "ppo/tokens"}
    out["ppo/tokens"] = float(weights.sum())
    return out
