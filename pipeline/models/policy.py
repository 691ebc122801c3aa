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
from transformers import AutoConfig, PreTrainedTokenizerBase, T5Config, T5ForConditionalGeneration

from pipeline.config import ModelConfig
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
        *,
        pack: bool = False,
    ) -> PolicyOutput:
        """Teacher-forced pass over a prompt and a decoder sequence.

        Args:
            input_ids: (B, T_p) prompt token ids.
            attention_mask: (B, T_p) 1 for prompt tokens, 0 for padding.
            decoder_input_ids: (B, T) decoder inputs, starting with the decoder start token
                (``<pad>`` for T5), i.e. the response shifted right.
            decoder_attention_mask: (B, T) 1 for real decoder positions; ``None`` attends to all.
            pack: run the encoder on the prompts' real tokens only (:func:`packed_encoder_states`);
                the same result up to float rounding, with no compute spent on padding.

        Returns:
            ``PolicyOutput(logits (B, T, V), values (B, T))``: position t predicts token t + 1 of
            ``decoder_input_ids`` and holds the value of the state after token t.
        """
        encoder_outputs = None
        if pack:
            encoder_outputs = (packed_encoder_states(self.policy.get_encoder(), input_ids, attention_mask),)
        out = self.policy(
            input_ids=None if pack else input_ids,
            attention_mask=attention_mask,
            encoder_outputs=encoder_outputs,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
        )
        # The last entry is the decoder output after the final layer norm, the input of lm_head.
        hidden = cast(torch.Tensor, out.decoder_hidden_states[-1])
        return PolicyOutput(cast(torch.Tensor, out.logits), self.value_head(hidden))

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

    The prompts' real tokens are packed back to back into ``R`` rows of at most
    ``max(T, min_row_tokens)`` tokens, run through ``encoder`` with a block-diagonal attention mask
    (a token attends only to its own prompt), and scattered back to the padded layout (zeros at
    padding). T5's relative position bias depends only on the distance between two tokens, so each
    prompt sees exactly what it sees alone: the result equals ``encoder(input_ids, attention_mask)``
    up to float rounding, while the projections and feed-forward layers skip the padding (half the
    tokens of a random mini-batch of ED contexts). Each prompt's tokens must be contiguous (right or
    left padding).

    Args:
        encoder: a T5 encoder stack (``T5ForConditionalGeneration.get_encoder()``).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 for real tokens.
        min_row_tokens: smallest packed row; rows never exceed ``max(T, min_row_tokens)``, so
            attention never costs more per token than in the padded batch beyond that floor.
    """
    batch, width = input_ids.shape
    lengths = attention_mask.sum(dim=1).tolist()
    budget = max(width, min_row_tokens)
    row_of, offset_of, fill = [], [], [0]
    for n in lengths:  # first fit in prompt order: B is a mini-batch, a Python loop is cheap
        if fill[-1] + n > budget and fill[-1] > 0:
            fill.append(0)
        row_of.append(len(fill) - 1)
        offset_of.append(fill[-1])
        fill[-1] += n
    device = input_ids.device
    src_b, src_t = attention_mask.nonzero(as_tuple=True)  # row-major: each prompt's tokens in order
    counts = torch.tensor(lengths, device=device)
    first = torch.cumsum(counts, 0) - counts  # index in src of each prompt's first token
    rank = torch.arange(src_b.numel(), device=device) - first[src_b]
    dst_r = torch.tensor(row_of, device=device)[src_b]
    dst_p = torch.tensor(offset_of, device=device)[src_b] + rank
    rows, packed_width = len(fill), max(max(fill), 1)
    packed = input_ids.new_zeros(rows, packed_width)
    packed[dst_r, dst_p] = input_ids[src_b, src_t]
    segment = torch.full((rows, packed_width), -1, dtype=torch.long, device=device)
    segment[dst_r, dst_p] = src_b
    same = segment.unsqueeze(2) == segment.unsqueeze(1)  # (R, N, N)
    real = segment >= 0
    # padding queries attend to themselves only: no row of the mask is empty (NaN in softmax)
    allowed = (same & real.unsqueeze(2)) | torch.eye(packed_width, dtype=torch.bool, device=device)
    hidden = encoder(
        input_ids=packed, attention_mask=allowed.unsqueeze(1), return_dict=True
    ).last_hidden_state
    out = hidden.new_zeros(batch, width, hidden.shape[-1])
    out[src_b, src_t] = hidden[dst_r, dst_p]
    return cast(torch.Tensor, out)


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
    return folder


def load_policy(folder: str | Path) -> tuple[PolicyWithValueHead, PreTrainedTokenizerBase]:
    """Restore a policy and its tokenizer from :func:`save_policy`'s folder (or any T5 folder/hub name).

    The value head is re-initialised, with a warning, when the folder has no ``value_head.safetensors``.
    """
    key = "policy folder"
    tokenizer = load_tokenizer(str(folder), key=key)
    model = PolicyWithValueHead(_load_t5(str(folder), key=key))
    _check_tokenizer(model.policy, tokenizer, key=key)
    head_file = Path(folder).expanduser() / VALUE_HEAD_FILE
    if head_file.is_file():
        model.value_head.load_state_dict(load_file(head_file))
    else:
        logger.warning("%s has no %s: the value head starts from random weights", folder, VALUE_HEAD_FILE)
    return model, tokenizer


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
