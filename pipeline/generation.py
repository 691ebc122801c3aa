"""Prompt encoding and response sampling for a T5 policy (rollouts, evaluation, serving).

:func:`encode_prompts` tokenises contexts with the SFT source rule (keep the last tokens);
:func:`sample_responses` samples a batch token by token with the KV cache under a fixed seed and
returns token ids, the response mask, the sampler's log-probabilities (and the value head's
estimates) and decoded text; :class:`StepSampler`
(serving) samples every row token by token with its own settings and its own seeded generator, and
:class:`TextDeltas` turns its tokens into streamed text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
from transformers import Cache, PreTrainedTokenizerBase, T5ForConditionalGeneration

from pipeline.config import RolloutConfig
from pipeline.models.decoder import decode, decoder_output
from pipeline.models.policy import PolicyWithValueHead, packed_encoder_states
from pipeline.ppo.experience import IntArray, PromptBatch, Rollouts
from pipeline.training.sft import truncate_source


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    *,
    max_source_len: int,
    index: Sequence[int] | IntArray,
    gold_levels: Mapping[str, IntArray],
    seed: int,
) -> PromptBatch:
    """A :class:`PromptBatch` of ``contexts``, each ending with ``</s>`` and keeping its last ``max_source_len`` tokens."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if not isinstance(eos, int) or not isinstance(pad, int):
        raise ValueError(
            "the policy tokenizer needs pad and eos tokens. Fix: use a T5 tokenizer or train_tokenizer's."
        )
    rows = tokenizer(list(contexts), add_special_tokens=True)["input_ids"]
    rows = [list(r) if len(r) else [eos] for r in rows]
    rows = [truncate_source(r if r[-1] == eos else [*r, eos], max_source_len) for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return PromptBatch(
        index=np.asarray(index, dtype=np.int64),
        contexts=tuple(contexts),
        gold_levels={m: np.asarray(v, dtype=np.int64) for m, v in gold_levels.items()},
        prompt_ids=ids,
        prompt_mask=mask,
        seed=seed,
    )


def response_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T_r) 1 up to and including each row's first ``eos_id`` (everything when there is none)."""
    is_eos = (response_ids == eos_id).long()
    before_or_at_first_eos = (is_eos.cumsum(-1) - is_eos) == 0
    return before_or_at_first_eos.long()


@torch.no_grad()
def sample_responses(
    model: T5ForConditionalGeneration | PolicyWithValueHead,
    tokenizer: PreTrainedTokenizerBase,
    prompts: PromptBatch,
    cfg: RolloutConfig,
    *,
    version: int = 0,
    greedy: bool = False,
) -> Rollouts:
    """Sample one response per prompt with ``cfg``'s top-k / top-p / temperature and length bounds.

    The same distribution as Hugging Face ``generate(do_sample=True)`` (``</s>`` barred until
    ``min_new_tokens``, then temperature, top-k, top-p), drawn from a ``torch.Generator`` seeded
    with ``prompts.seed``: a batch's responses depend only on the weights, the prompts and the seed,
    never on the global RNG. ``greedy`` decodes the argmax instead (evaluation). The encoder runs
    once on the prompts' real tokens (:func:`~pipeline.models.policy.packed_encoder_states`), then
    the decoder token by token with the KV cache; top-k draws among the ``k`` kept tokens instead of
    the whole vocabulary.

    Log-probabilities come from the model's raw logits (the distribution PPO optimises), not the
    warped one that was sampled. Given a :class:`PolicyWithValueHead`, the rollouts also carry the
    value head's estimate at every response position, from the same decoder states: with the log-
    probabilities, what the PPO learner would otherwise recompute in a second forward pass.
    """
    policy = model.policy if isinstance(model, PolicyWithValueHead) else model
    eos = cast(int, tokenizer.eos_token_id)
    pad = cast(int, tokenizer.pad_token_id)
    ids, mask = prompts.prompt_ids, prompts.prompt_mask
    device = ids.device
    generator = torch.Generator(device=device).manual_seed(prompts.seed)
    with torch.no_grad():
        encoded = packed_encoder_states(policy.get_encoder(), ids, mask)
        next_ids = torch.full((len(prompts), 1), int(policy.config.decoder_start_token_id), device=device)
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        cache: Cache | None = None
        tokens, logprobs, values = [], [], []
        with_values = isinstance(model, PolicyWithValueHead)
        for step in range(cfg.max_new_tokens):
            out = decode(policy, encoded, mask, next_ids, step=True, cache=cache, hidden_states=with_values)
            cache = out.cache
            logits = cast(torch.Tensor, out.logits)[:, -1, :].float()  # (B, V) raw
            if isinstance(model, PolicyWithValueHead):
                values.append(model.value_head(decoder_output(out)[:, -1]).float())
            token = _draw(logits, cfg, step=step, eos=eos, greedy=greedy, generator=generator)
            token = token.masked_fill(done, pad)
            logprobs.append(torch.log_softmax(logits, dim=-1).gather(-1, token.unsqueeze(-1)).squeeze(-1))
            tokens.append(token)
            done |= token == eos
            if bool(done.all()):
                break
            next_ids = token.unsqueeze(-1)
    response_ids = torch.stack(tokens, dim=1)
    resp_mask = response_mask(response_ids, eos)
    response_ids = response_ids.masked_fill(resp_mask == 0, pad)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Rollouts(
        prompts=prompts,
        response_ids=response_ids,
        response_mask=resp_mask,
        logprobs=torch.stack(logprobs, dim=1) * resp_mask,
        responses=tuple(t.strip() for t in texts),
        version=version,
        values=torch.stack(values, dim=1) * resp_mask if values else None,
    )


def _draw(
    logits: torch.Tensor, cfg: RolloutConfig, *, step: int, eos: int, greedy: bool, generator: torch.Generator
) -> torch.Tensor:
    """(B, V) raw logits -> (B,) tokens drawn from :func:`sampling_distribution` (or the argmax)."""
    if greedy:
        if step < cfg.min_new_tokens:
            logits = logits.clone()
            logits[:, eos] = float("-inf")
        return logits.argmax(dim=-1)
    probs, index = sampling_distribution(logits, cfg, step=step, eos=eos)
    return index.gather(-1, torch.multinomial(probs, 1, generator=generator)).squeeze(-1)


def sampling_distribution(
    logits: torch.Tensor, cfg: RolloutConfig, *, step: int, eos: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """What Hugging Face ``generate(do_sample=True)`` samples from at decoding step ``step``: ``</s>``
    barred before ``min_new_tokens``, then temperature, top-k, top-p (its order), as ``(probs,
    index)`` (B, k) over the ``k`` tokens top-k keeps (every other token has probability 0), so a
    draw costs ``k`` instead of the vocabulary."""
    scores = logits / cfg.temperature
    if step < cfg.min_new_tokens:
        scores = scores.clone()
        scores[:, eos] = float("-inf")
    k = cfg.top_k if 0 < cfg.top_k < scores.shape[-1] else scores.shape[-1]
    kept, index = torch.topk(scores, k, dim=-1)  # (B, k), descending
    if cfg.top_p < 1.0:
        # the nucleus over the kept tokens, ascending as Hugging Face does; the most likely stays
        ascending = kept.flip(-1)
        cumulative = torch.softmax(ascending, dim=-1).cumsum(-1)
        drop = cumulative <= 1 - cfg.top_p
        drop[:, -1] = False
        kept = ascending.masked_fill(drop, float("-inf")).flip(-1)
    return torch.softmax(kept, dim=-1), index


@dataclass(frozen=True)
class SamplingSettings:
    """How one request is sampled; ``seed`` seeds that request's own ``torch.Generator``."""

    temperature: float
    top_k: int
    """0 disables top-k."""
    top_p: float
    min_new_tokens: int
    max_new_tokens: int
    seed: int


def _warp(logits: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """(V,) logits -> (V,) probabilities after temperature, top-k, then top-p (Hugging Face's order)."""
    logits = logits / s.temperature
    if 0 < s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits)  # ascending
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative <= 1 - s.top_p
        drop[-1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return torch.softmax(logits, dim=-1)


@dataclass(frozen=True)
class Sampled:
    """One sampled response with what an API reports about it."""

    text: str
    prompt_tokens: int
    """Context tokens the policy read (after truncation to ``max_source_len``, ``</s>`` included)."""
    completion_tokens: int
    """Tokens generated, ``</s>`` included when the response ended with it."""
    finish_reason: Literal["stop", "length"]
    """``stop``: the policy ended the response (``</s>``); ``length``: ``max_new_tokens`` cut it."""


class StepSampler:
    """Every row of a batch sampled token by token, each with its own settings and seeded generator.

    Iterating yields, per decoding step, the token each row drew (``None`` for a row already done);
    :meth:`results` then gives the finished responses. The global RNG is never touched: row ``i``
    draws from ``torch.Generator().manual_seed(settings[i].seed)`` once per generated token, so a
    request's response depends on its context, settings and seed only, not on the requests batched
    with it (up to float rounding of padded batched matrix products). Encoder once, then the decoder
    token by token with the KV cache; a row stops at ``</s>`` or ``max_new_tokens``.
    """

    def __init__(
        self,
        model: T5ForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        contexts: Sequence[str],
        settings: Sequence[SamplingSettings],
        *,
        max_source_len: int,
        abandoned: Sequence[Callable[[], bool]] | None = None,
    ) -> None:
        """``abandoned[i]()`` true stops row ``i`` at the next step (its caller has gone: a timeout or
        a disconnect), so a batch never computes for nobody."""
        if len(contexts) != len(settings):
            raise ValueError(f"sampling got {len(contexts)} contexts but {len(settings)} settings")
        self.abandoned = list(abandoned) if abandoned is not None else []
        self.model, self.tokenizer, self.settings = model, tokenizer, list(settings)
        self.contexts, self.max_source_len = list(contexts), max_source_len
        self.eos = cast(int, tokenizer.eos_token_id)
        self.tokens: list[list[int]] = [[] for _ in contexts]
        self.done = [s.max_new_tokens < 1 for s in settings]
        self.prompt_tokens: list[int] = []

    @torch.no_grad()
    def __iter__(self) -> Iterator[list[int | None]]:
        if not self.contexts:
            return
        model, settings, eos = self.model, self.settings, self.eos
        prompts = encode_prompts(
            self.tokenizer, self.contexts, max_source_len=self.max_source_len,
            index=range(len(self.contexts)), gold_levels={}, seed=0,
        )  # fmt: skip
        self.prompt_tokens = [int(n) for n in prompts.prompt_mask.sum(dim=1)]
        device = next(model.parameters()).device
        ids, mask = prompts.prompt_ids.to(device), prompts.prompt_mask.to(device)
        generators = [torch.Generator().manual_seed(s.seed) for s in settings]
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
        pad = cast(int, self.tokenizer.pad_token_id)
        next_ids = torch.full((len(settings), 1), int(model.config.decoder_start_token_id), device=device)
        past: Cache | None = None
        for step in range(max(s.max_new_tokens for s in settings)):
            for i, gone in enumerate(self.abandoned):
                self.done[i] = self.done[i] or gone()
            if all(self.done):
                return
            out = decode(model, encoded, mask, next_ids, step=True, cache=past, hidden_states=False)
            past = out.cache
            logits = cast(torch.Tensor, out.logits)[:, -1, :].float().cpu()
            drawn: list[int | None] = []
            for i, s in enumerate(settings):
                if self.done[i]:
                    drawn.append(None)
                    continue
                row = logits[i].clone()
                if step < s.min_new_tokens:
                    row[eos] = float("-inf")
                token = int(torch.multinomial(_warp(row, s), 1, generator=generators[i]))
                self.tokens[i].append(token)
                self.done[i] = token == eos or len(self.tokens[i]) >= s.max_new_tokens
                drawn.append(token)
            yield drawn
            next_ids = torch.tensor([pad if t is None else t for t in drawn], device=device).unsqueeze(1)

    def text(self, i: int) -> str:
        """Row ``i``'s response so far, decoded without special tokens and stripped."""
        return str(self.tokenizer.decode(self.tokens[i], skip_special_tokens=True)).strip()

    def result(self, i: int) -> Sampled:
        """Row ``i``'s response, once the row is done."""
        tokens = self.tokens[i]
        return Sampled(
            text=self.text(i),
            prompt_tokens=self.prompt_tokens[i] if self.prompt_tokens else 0,
            completion_tokens=len(tokens),
            finish_reason="stop" if tokens and tokens[-1] == self.eos else "length",
        )

    def results(self) -> list[Sampled]:
        """The responses, once iteration is over."""
        return [self.result(i) for i in range(len(self.tokens))]


class TextDeltas:
    """The text of a growing token sequence as deltas whose concatenation is the final stripped text.

    SentencePiece decodes a prefix of tokens to a string that is not always a prefix of the longer
    decoding (a trailing space is only known once the next piece comes); a delta is sent only while the
    stripped decoding extends what was sent, so clients never see text taken back.
    """

    def __init__(self) -> None:
        self.sent = ""

    def update(self, text: str) -> str:
        """The new text of ``text`` (the whole response so far, stripped) beyond what was sent."""
        if not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


def generate_each(
    model: T5ForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    settings: Sequence[SamplingSettings],
    *,
    max_source_len: int,
) -> list[Sampled]:
    """One :class:`Sampled` per context (see :class:`StepSampler`)."""
    sampler = StepSampler(model, tokenizer, contexts, settings, max_source_len=max_source_len)
    for _ in sampler:
        pass
    return sampler.results()


def sample_each(
    model: T5ForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    settings: Sequence[SamplingSettings],
    *,
    max_source_len: int,
) -> list[str]:
    """One response per context, each sampled with its own settings and its own seeded generator
    (see :class:`StepSampler`)."""
    return [
        r.text for r in generate_each(model, tokenizer, contexts, settings, max_source_len=max_source_len)
    ]
