"""The policy: a T5 seq2seq model with a scalar value head on the decoder.

Like trl's ``AutoModelForSeq2SeqLMWithValueHead``: the value head (dropout + ``Linear(d_model, 1)``)
reads the last decoder hidden state of every response position. A saved policy is a plain Hugging
Face ``save_pretrained`` folder (loadable without this project) plus ``value_head.safetensors``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)

from pipeline import storage
from pipeline.config import ModelConfig
from pipeline.models.decoder import decode, decoder_output
from pipeline.models.sources import ModelSourceError, as_float32, load_pretrained, resolve_source
from pipeline.models.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"


class PolicyOutput(NamedTuple):
    """Output of :meth:`PolicyWithValueHead.forward`; unpacks as ``logits, values``."""

    logits: torch.Tensor
    """(B, T, V) next-token logits at every decoder position."""
    values: torch.Tensor
    """(B, T) value estimate at every decoder position."""


class Packing:
    """Where the real tokens of a padded (B, T) batch go in a packed (R, N) layout, and back."""

    def __init__(self, mask: torch.Tensor, row_of: list[int], width: int) -> None:
        """``mask`` (B, T) marks real tokens (contiguous per row); ``row_of[i]`` is row ``i``'s packed
        row; rows take their sequences back to back in order, ``width`` tokens at most."""
        device = mask.device
        self.batch, self.padded_width = mask.shape
        lengths = mask.sum(dim=1)
        self.src_b, self.src_t = mask.nonzero(as_tuple=True)  # row-major: each row's tokens in order
        first = torch.cumsum(lengths, 0) - lengths  # index in src of each row's first token
        rank = torch.arange(self.src_b.numel(), device=device) - first[self.src_b]
        rows = torch.tensor(row_of, device=device, dtype=torch.long)
        # offset of each sequence in its packed row: the lengths of the earlier sequences of that row
        same_row_before = (rows.unsqueeze(0) == rows.unsqueeze(1)).tril(-1)  # [i, j]: j < i, same row
        offsets = (same_row_before.long() * lengths.unsqueeze(0)).sum(dim=1)
        self.dst_r = rows[self.src_b]
        self.dst_p = offsets[self.src_b] + rank
        self.rows = int(max(row_of)) + 1 if row_of else 1
        self.width = max(width, 1)
        self.segment = torch.full((self.rows, self.width), -1, dtype=torch.long, device=device)
        self.segment[self.dst_r, self.dst_p] = self.src_b

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (R, N, ...), zeros where no token is."""
        out = x.new_zeros((self.rows, self.width, *x.shape[2:]))
        out[self.dst_r, self.dst_p] = x[self.src_b, self.src_t]
        return out

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(R, N, ...) -> (B, T, ...), zeros at padding (differentiable)."""
        out = x.new_zeros((self.batch, self.padded_width, *x.shape[2:]))
        out[self.src_b, self.src_t] = x[self.dst_r, self.dst_p]
        return out

    def block_mask(self, *, causal: bool = False) -> torch.Tensor:
        """(R, 1, N, N) bool: a token attends to its own sequence (earlier tokens only if ``causal``);
        an empty slot attends to itself, so no softmax row is empty."""
        real = self.segment >= 0
        allowed = (self.segment.unsqueeze(2) == self.segment.unsqueeze(1)) & real.unsqueeze(2)
        if causal:
            allowed = allowed.tril()
        eye = torch.eye(self.width, dtype=torch.bool, device=self.segment.device)
        return (allowed | eye).unsqueeze(1)


def balanced_rows(lengths: list[int], budget: int) -> list[int]:
    """Row of each sequence: ``ceil(Σ lengths / budget)`` rows (more if one would overflow), filled
    longest first into the emptiest row, so rows end up nearly equal and padding to the longest
    row wastes little. ``budget`` must be at least the longest sequence."""
    total = sum(lengths)
    rows = max(1, -(-total // budget))
    while True:
        fill = [0] * rows
        row_of = [0] * len(lengths)
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            r = min(range(rows), key=fill.__getitem__)
            row_of[i] = r
            fill[r] += lengths[i]
        if max(fill) <= budget or rows >= len(lengths):
            return row_of
        rows += 1


class PackPlan:
    """(prompt, response) pairs packed for one teacher-forced pass.

    The encoder runs on the prompts packed by prompt length (``encoder``); the decoder on the
    responses packed by response length (``decoder``), each decoder row cross-attending to the
    prompts of its own pairs, packed the same way (``memory``: the encoder states re-laid out).
    """

    def __init__(self, encoder: Packing, decoder: Packing, memory: Packing) -> None:
        self.encoder, self.decoder, self.memory = encoder, decoder, memory

    @classmethod
    def pairs(
        cls, encoder_mask: torch.Tensor, decoder_mask: torch.Tensor, *, min_row_tokens: int = 128
    ) -> PackPlan:
        """Rows of at most ``max(T, min_row_tokens)`` tokens per layout (:func:`balanced_rows`), so a
        packed row never costs more attention per token than the padded batch beyond that floor."""
        enc_len = encoder_mask.sum(dim=1).tolist()
        dec_len = decoder_mask.sum(dim=1).tolist()
        enc_rows = balanced_rows(enc_len, max(encoder_mask.shape[1], min_row_tokens))
        dec_rows = balanced_rows(dec_len, max(decoder_mask.shape[1], min_row_tokens))
        return cls(
            Packing(encoder_mask, enc_rows, _widest(enc_len, enc_rows)),
            Packing(decoder_mask, dec_rows, _widest(dec_len, dec_rows)),
            Packing(encoder_mask, dec_rows, _widest(enc_len, dec_rows)),
        )

    def cross_mask(self) -> torch.Tensor:
        """(R, 1, N_dec, N_mem) bool: a decoder token attends to its own pair's prompt; an empty
        decoder slot to the row's first memory slot."""
        dec, mem = self.decoder.segment, self.memory.segment
        allowed = (dec.unsqueeze(2) == mem.unsqueeze(1)) & (dec >= 0).unsqueeze(2)
        allowed[:, :, 0] |= dec < 0
        return allowed.unsqueeze(1)


def _widest(lengths: list[int], row_of: list[int]) -> int:
    fill: dict[int, int] = {}
    for n, r in zip(lengths, row_of, strict=True):
        fill[r] = fill.get(r, 0) + n
    return max(fill.values(), default=1)


class PackedOutput(NamedTuple):
    """Output of :meth:`PolicyWithValueHead.packed`."""

    logits: torch.Tensor
    """(R, N, V) next-token logits at every packed decoder slot."""
    values: torch.Tensor
    """(R, N) value estimate at every packed decoder slot."""
    layout: Packing
    """The decoder layout: ``layout.unpack`` moves (R, N) tensors back to (B, T)."""


class ValueHead(nn.Module):
    """Dropout then ``Linear(d_model, 1)``: (B, T, d_model) hidden states -> (B, T) values."""

    def __init__(self, d_model: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.summary = nn.Linear(d_model, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, T), in the head's dtype."""
        hidden_states = hidden_states.to(self.summary.weight.dtype)
        return cast(torch.Tensor, self.summary(self.dropout(hidden_states))).squeeze(-1)


class PolicyWithValueHead(nn.Module):
    """A ``T5ForConditionalGeneration`` (``.policy``) and a :class:`ValueHead` (``.value_head``)."""

    def __init__(self, policy: T5ForConditionalGeneration, value_dropout: float = 0.1) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = ValueHead(policy.config.d_model, value_dropout)

    @property
    def config(self) -> T5Config:
        """The inner model's config."""
        return self.policy.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> PolicyOutput:
        """Teacher-forced pass over a prompt and a decoder sequence.

        Args:
            input_ids: (B, T_p) prompt token ids.
            attention_mask: (B, T_p) 1 for prompt tokens, 0 for padding.
            decoder_input_ids: (B, T) decoder inputs, starting with the decoder start token
                (``<pad>`` for T5), i.e. the response shifted right.
            decoder_attention_mask: (B, T) 1 for real decoder positions; ``None`` attends to all.

        Returns:
            ``PolicyOutput(logits (B, T, V), values (B, T))``: position t predicts token t + 1 of
            ``decoder_input_ids`` and holds the value of the state after token t.
        """
        encoded = self.policy.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)[0]
        out = decode(
            self.policy, encoded, attention_mask, decoder_input_ids, decoder_mask=decoder_attention_mask
        )
        return PolicyOutput(cast(torch.Tensor, out.logits), self.value_head(decoder_output(out)))

    def packed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        decoder_lengths: torch.Tensor,
        *,
        min_row_tokens: int = 128,
    ) -> PackedOutput:
        """:meth:`forward` without computing on padding: (prompt, response) pairs packed into rows.

        Each pair's prompt tokens go into an encoder row and its ``decoder_lengths[i]`` first
        decoder positions into the same decoder row, back to back with other pairs; block masks keep
        every token to its own pair (encoder: its prompt; decoder: causal within its response;
        cross-attention: its prompt). T5's relative position bias depends only on the distance of two
        tokens, so each pair sees exactly what it sees alone: the same numbers as :meth:`forward` up to
        float rounding, while the projections, feed-forward layers and the vocabulary projection
        skip all padding. Each prompt's tokens must be contiguous (right or left padding).

        Args:
            input_ids: (B, T_p) prompt token ids; attention_mask: (B, T_p) their mask.
            decoder_input_ids: (B, T) decoder inputs (start token, then the response shifted right).
            decoder_lengths: (B,) decoder positions of each pair that count (its response length).
            min_row_tokens: see :meth:`PackPlan.pairs`.

        Returns:
            :class:`PackedOutput`: logits (R, N, V) and values (R, N) in the packed layout, and the
            layout to move per-token tensors between (B, T) and (R, N).
        """
        width = decoder_input_ids.shape[1]
        decoder_mask = torch.arange(width, device=decoder_input_ids.device) < decoder_lengths.unsqueeze(1)
        plan = PackPlan.pairs(attention_mask, decoder_mask.long(), min_row_tokens=min_row_tokens)
        encoder = plan.encoder
        config = self.policy.config
        hidden = self.policy.get_encoder()(
            input_ids=encoder.pack(input_ids),
            attention_mask=_for_kernel(encoder.block_mask(), config, self.policy.dtype),
            return_dict=True,
        ).last_hidden_state
        decoder = plan.decoder
        memory = plan.memory.pack(encoder.unpack(hidden))  # each decoder row's own prompts
        out = decode(
            self.policy,
            memory,
            _for_kernel(plan.cross_mask(), config, self.policy.dtype),
            decoder.pack(decoder_input_ids),
            decoder_mask=_for_kernel(decoder.block_mask(causal=True), config, self.policy.dtype),
        )
        return PackedOutput(cast(torch.Tensor, out.logits), self.value_head(decoder_output(out)), decoder)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Sample or search, without gradients, with the inner model's ``generate`` (kwargs pass through).

        Args:
            input_ids: (B, T_p) prompt token ids.
            attention_mask: (B, T_p) prompt mask.

        Returns:
            (B, 1 + T_r) sequences starting with the decoder start token; finished rows are
            padded with ``<pad>`` after their ``</s>``.
        """
        out = self.policy.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return out if isinstance(out, torch.Tensor) else cast(torch.Tensor, out.sequences)


def packed_encoder_states(
    encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, min_row_tokens: int = 128
) -> torch.Tensor:
    """The encoder's (B, T, d) last hidden states of padded prompts, computed without the padding.

    The prompts' real tokens are packed back to back into rows of at most ``max(T, min_row_tokens)``
    tokens (:class:`Packing`), run through ``encoder`` with a block-diagonal attention mask, and
    scattered back to the padded layout (zeros at padding): the same as ``encoder(input_ids,
    attention_mask)`` up to float rounding (T5's relative position bias depends only on distances).
    """
    lengths = attention_mask.sum(dim=1).tolist()
    rows = balanced_rows(lengths, max(attention_mask.shape[1], min_row_tokens))
    packing = Packing(attention_mask, rows, _widest(lengths, rows))
    hidden = encoder(
        input_ids=packing.pack(input_ids),
        attention_mask=_for_kernel(
            packing.block_mask(), cast(T5Config, encoder.config), next(encoder.parameters()).dtype
        ),
        return_dict=True,
    ).last_hidden_state
    return packing.unpack(hidden)


def _for_kernel(allowed: torch.Tensor, config: T5Config, dtype: torch.dtype) -> torch.Tensor:
    """A prepared (R, 1, N, M) bool mask as the model's attention kernel takes it: Hugging Face passes a
    4-D mask through unchanged, and SDPA reads booleans while the ``eager`` path adds the mask to the
    scores (0 where allowed, the minimum of the weights' ``dtype`` elsewhere)."""
    if config._attn_implementation != "eager":
        return allowed
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return blocked.masked_fill_(~allowed, torch.finfo(dtype).min)


def policy_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> T5Config:
    """T5 config for a randomly initialised policy (original T5 layout: ReLU FFN, tied embeddings).

    The vocabulary and the pad/eos ids come from ``tokenizer``; the decoder starts with ``<pad>``.
    """
    pad_id, eos_id = _special_ids(tokenizer)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=cfg.d_model,
        d_kv=cfg.d_kv,
        d_ff=cfg.d_ff,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        dropout_rate=cfg.dropout_rate,
        feed_forward_proj="relu",
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    )
    config.decoder_start_token_id = pad_id
    return config


def build_policy(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PolicyWithValueHead:
    """The policy named by ``cfg.name_or_path`` (hub name or folder), or a random T5 from the shape fields.

    A fresh value head is attached either way. Weights are float32; precision is the caller's choice.
    """
    if cfg.name_or_path is None:
        config = policy_config(cfg, tokenizer)
        model = T5ForConditionalGeneration(config)
        logger.info(
            "built a random T5 policy: d_model %d, %d+%d layers, vocab %d, %.1fM parameters",
            cfg.d_model,
            cfg.num_layers,
            cfg.num_decoder_layers,
            config.vocab_size,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
    else:
        model = _load_t5(cfg.name_or_path, key="model.name_or_path")
        _check_tokenizer(model, tokenizer, key="model.name_or_path")
    return PolicyWithValueHead(model)


def save_policy(model: PolicyWithValueHead, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """Write ``model.policy`` and ``tokenizer`` with ``save_pretrained`` and the value head beside them.

    The folder loads with plain ``AutoModelForSeq2SeqLM.from_pretrained`` / ``AutoTokenizer``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.policy.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.value_head.state_dict().items()}
    save_file(state, folder / VALUE_HEAD_FILE)
    storage.publish(folder)  # a folder mirroring a URI is uploaded by the process that wrote it
    return folder


def load_policy(folder: str | Path) -> tuple[PolicyWithValueHead, PreTrainedTokenizerBase]:
    """Restore a policy and its tokenizer from :func:`save_policy`'s folder (or any T5 folder/hub name).

    The value head is re-initialised, with a warning, when the folder has no ``value_head.safetensors``.
    """
    key = "policy folder"
    tokenizer = load_tokenizer(str(folder), key=key)
    model = PolicyWithValueHead(_load_t5(str(folder), key=key))
    _check_tokenizer(model.policy, tokenizer, key=key)
    head_file = storage.local_path(str(folder)).expanduser() / VALUE_HEAD_FILE
    if head_file.is_file():
        model.value_head.load_state_dict(load_file(head_file))
    else:
        logger.warning("%s has no %s: the value head starts from random weights", folder, VALUE_HEAD_FILE)
    return model, tokenizer


def use_fastest_attention(model: nn.Module, device: torch.device | str) -> None:
    """Give every Hugging Face model inside ``model`` (the policy's T5, an identifier's two encoders)
    the attention kernel that is fastest on ``device``: PyTorch's fused ``scaled_dot_product_attention``
    on GPUs, the plain matmul path (``eager``) on the CPU, where at these sizes the fused kernel loses
    to two matmuls, notably on T5's masked route (it adds a learned position bias to every attention's
    scores). With the Ray workers' malloc settings (``actors.cluster.session.MALLOC_TUNING``) eager makes the
    d256 PPO update ~4 % faster, sampling ~5 % and the reward identifiers ~25 %
    (``benchmarks/cpu_settings.py``); the numbers are the same up to float rounding."""
    kernel = "eager" if torch.device(device).type == "cpu" else "sdpa"
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.set_attn_implementation(kernel)


def _load_t5(name_or_path: str, *, key: str) -> T5ForConditionalGeneration:
    source = resolve_source(name_or_path, key=key)
    config = load_pretrained(AutoConfig.from_pretrained, source, key=key, what="model config")
    if config.model_type != "t5":
        raise ModelSourceError(
            f"{key}={name_or_path!r} is a {config.model_type!r} model; the policy must be T5 "
            "(model_type 't5'). Fix: pass a T5 checkpoint such as 't5-base' or a folder saved by save_policy."
        )
    model = load_pretrained(T5ForConditionalGeneration.from_pretrained, source, key=key, what="T5 policy")
    return as_float32(model)


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    if not isinstance(pad_id, int) or not isinstance(eos_id, int):
        raise ValueError(
            f"tokenizer has pad_token_id={pad_id!r}, eos_token_id={eos_id!r}; a seq2seq policy needs "
            "both. Fix: use a T5 tokenizer or one made by train_tokenizer."
        )
    return pad_id, eos_id


def _check_tokenizer(
    model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, *, key: str
) -> None:
    config = model.config
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"{key}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
            f"{config.vocab_size}. Fix: use the tokenizer the model was trained with."
        )
    pad_id, eos_id = _special_ids(tokenizer)
    if (pad_id, eos_id) != (config.pad_token_id, config.eos_token_id):
        raise ValueError(
            f"{key}: tokenizer pad/eos ids ({pad_id}, {eos_id}) differ from the model's "
            f"({config.pad_token_id}, {config.eos_token_id}). Fix: use the tokenizer the model was trained with."
        )
