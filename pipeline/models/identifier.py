"""Empathy identifier: a 3-level classifier for one EPITOME mechanism (ER, IP or EX).

Architecture of EmpRL's official code: two separate encoders (context, response); one
single-head cross-attention block (query = response states, key/value = context states) added
residually with dropout; masked mean pooling over response tokens; head
Linear(d -> d/2) -> Tanh -> Dropout -> Linear(d/2 -> 3). Padding never changes the prediction.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    MT5EncoderModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5EncoderModel,
    UMT5EncoderModel,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from pipeline import storage
from pipeline.config import IdentifiersConfig
from pipeline.models.sources import ModelSourceError, as_float32, load_pretrained, resolve_source
from pipeline.models.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

NUM_LEVELS = 3
"""EPITOME levels: 0 none, 1 weak, 2 strong."""

CONTEXT_ENCODER_DIR = "context_encoder"
RESPONSE_ENCODER_DIR = "response_encoder"
HEAD_FILE = "head.safetensors"
META_FILE = "identifier.json"
FORMAT_VERSION = 1

# T5-family checkpoints hold an encoder-decoder; only their encoder stack is loaded.
_T5_ENCODERS: dict[str, type[PreTrainedModel]] = {
    "t5": T5EncoderModel,
    "mt5": MT5EncoderModel,
    "umt5": UMT5EncoderModel,
}


class EmpathyIdentifier(nn.Module):
    """Scores (context, response) pairs into ``NUM_LEVELS`` empathy levels of one mechanism."""

    def __init__(
        self,
        context_encoder: PreTrainedModel,
        response_encoder: PreTrainedModel,
        *,
        dropout: float = 0.1,
        num_levels: int = NUM_LEVELS,
    ) -> None:
        super().__init__()
        d_model = int(context_encoder.config.hidden_size)
        if int(response_encoder.config.hidden_size) != d_model:
            raise ValueError(
                f"context encoder hidden size {d_model} differs from the response encoder's "
                f"{response_encoder.config.hidden_size}. Fix: build both encoders from the same checkpoint."
            )
        self.context_encoder = context_encoder
        self.response_encoder = response_encoder
        self.cross_attention = nn.MultiheadAttention(d_model, 1, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Sequential(
            nn.Linear(d_model, d_model // 2),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(d_model // 2, num_levels),
        )
        self.dropout_rate = dropout
        self.num_levels = num_levels

    @property
    def d_model(self) -> int:
        """Hidden size of the encoders and the cross-attention."""
        return int(self.cross_attention.embed_dim)

    def forward(
        self,
        context_ids: torch.Tensor,
        context_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Level logits for each (context, response) pair.

        Args:
            context_ids: (B, T_c) context token ids.
            context_mask: (B, T_c) 1 for context tokens, 0 for padding.
            response_ids: (B, T_r) response token ids.
            response_mask: (B, T_r) 1 for response tokens, 0 for padding.

        Returns:
            (B, num_levels) unnormalised level logits.
        """
        context = self._encode(self.context_encoder, context_ids, context_mask)  # (B, T_c, d)
        response = self._encode(self.response_encoder, response_ids, response_mask)  # (B, T_r, d)
        ignore = context_mask == 0  # (B, T_c), True = padding
        # A row without any context token would attend to nothing (NaN); let it see position 0.
        ignore[:, 0] &= context_mask.any(dim=1)
        attended, _ = self.cross_attention(
            response, context, context, key_padding_mask=ignore, need_weights=False
        )
        hidden = response + self.dropout(attended)  # (B, T_r, d)
        weights = response_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T_r, 1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, d)
        return cast(torch.Tensor, self.head(pooled))

    @staticmethod
    def _encode(encoder: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = encoder(input_ids=ids, attention_mask=mask, return_dict=True)
        return cast(torch.Tensor, out.last_hidden_state)


def encoder_config(cfg: IdentifiersConfig, tokenizer: PreTrainedTokenizerBase) -> T5Config:
    """T5 config of a tiny random encoder (ReLU FFN, ``d_kv = d_model / num_heads``, dropout ``cfg.dropout``)."""
    return T5Config(
        vocab_size=len(tokenizer),
        d_model=cfg.d_model,
        d_kv=cfg.d_model // cfg.num_heads,
        is_encoder_decoder=False,
        d_ff=cfg.d_ff,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        dropout_rate=cfg.dropout,
        feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_identifier(cfg: IdentifiersConfig, tokenizer: PreTrainedTokenizerBase) -> EmpathyIdentifier:
    """An identifier whose two encoders come from ``cfg.encoder`` (hub name or folder), or tiny random T5s.

    ``tokenizer`` must be the encoder's own when ``cfg.encoder`` is set (see
    :func:`pipeline.models.tokenizer.build_identifier_tokenizer`). Weights are float32.
    """
    if cfg.encoder is None:
        config = encoder_config(cfg, tokenizer)
        context_encoder: PreTrainedModel = T5EncoderModel(config)
        response_encoder: PreTrainedModel = T5EncoderModel(config)
    else:
        key = "identifiers.encoder"
        context_encoder = load_encoder(cfg.encoder, key=key)
        response_encoder = load_encoder(cfg.encoder, key=key)
        vocab = int(context_encoder.config.vocab_size)
        if len(tokenizer) > vocab:
            raise ValueError(
                f"{key}={cfg.encoder!r}: the tokenizer has {len(tokenizer)} tokens but the encoder's "
                f"vocabulary has {vocab}. Fix: use the encoder's own tokenizer (build_identifier_tokenizer)."
            )
    model = EmpathyIdentifier(context_encoder, response_encoder, dropout=cfg.dropout)
    logger.info(
        "built an identifier: %s encoders, d_model %d, %.1fM parameters",
        context_encoder.config.model_type,
        model.d_model,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model


def load_encoder(name_or_path: str, *, key: str) -> PreTrainedModel:
    """One encoder from a hub name or folder: the encoder stack of a T5, else ``AutoModel``.

    BERT-like poolers are left out: the identifier pools itself, and unused weights would get no
    gradient under data-parallel training.
    """
    source = resolve_source(name_or_path, key=key)
    config = cast(
        PretrainedConfig, load_pretrained(AutoConfig.from_pretrained, source, key=key, what="config")
    )
    model_type = str(config.model_type)
    if model_type in _T5_ENCODERS:
        cls = _T5_ENCODERS[model_type]
        return as_float32(load_pretrained(cls.from_pretrained, source, key=key, what="encoder"))
    if getattr(config, "is_encoder_decoder", False):
        raise ModelSourceError(
            f"{key}={name_or_path!r} is a {model_type!r} encoder-decoder; only T5-family checkpoints "
            "are split into their encoder. Fix: pass an encoder model (BERT, RoBERTa, MiniLM, ...) or a T5."
        )
    kwargs: dict[str, Any] = {}
    model_cls = MODEL_MAPPING.get(type(config), None)
    if isinstance(model_cls, type) and "add_pooling_layer" in inspect.signature(model_cls).parameters:
        kwargs["add_pooling_layer"] = False
    model = load_pretrained(
        lambda s: cast(PreTrainedModel, AutoModel.from_pretrained(s, **kwargs)),
        source,
        key=key,
        what="encoder",
    )
    return as_float32(model)


def save_identifier(model: EmpathyIdentifier, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """Write an identifier: ``context_encoder/`` and ``response_encoder/`` (``save_pretrained``),
    ``head.safetensors`` (cross-attention and head), ``identifier.json`` and the tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.context_encoder.save_pretrained(folder / CONTEXT_ENCODER_DIR)
    model.response_encoder.save_pretrained(folder / RESPONSE_ENCODER_DIR)
    tokenizer.save_pretrained(folder)
    save_file(_head_state(model), folder / HEAD_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "architecture": "EmpathyIdentifier",
        "encoder_type": str(model.context_encoder.config.model_type),
        "d_model": model.d_model,
        "num_levels": model.num_levels,
        "dropout": model.dropout_rate,
        "context_encoder": CONTEXT_ENCODER_DIR,
        "response_encoder": RESPONSE_ENCODER_DIR,
        "head": HEAD_FILE,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    storage.publish(folder)  # a folder mirroring a URI is uploaded by the process that wrote it
    return folder


def load_identifier(folder: str | Path) -> tuple[EmpathyIdentifier, PreTrainedTokenizerBase]:
    """Restore an identifier and its tokenizer from :func:`save_identifier`'s folder."""
    root = storage.fetch(storage.local_path(str(folder)).expanduser())
    key = "identifier folder"
    meta_file = root / META_FILE
    if not meta_file.is_file():
        raise ModelSourceError(
            f"{key} {str(folder)!r} has no {META_FILE}. Fix: pass a folder written by save_identifier "
            "(the identifiers stage writes one per mechanism)."
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelSourceError(
            f"{meta_file}: format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}. "
            "Fix: re-run the identifiers stage with this version of the project."
        )
    tokenizer = load_tokenizer(str(root), key=key)
    model = EmpathyIdentifier(
        load_encoder(str(root / meta["context_encoder"]), key=key),
        load_encoder(str(root / meta["response_encoder"]), key=key),
        dropout=float(meta["dropout"]),
        num_levels=int(meta["num_levels"]),
    )
    head_file = root / meta["head"]
    if not head_file.is_file():
        raise ModelSourceError(
            f"{key} {str(folder)!r} has no {meta['head']}. Fix: re-save it with save_identifier."
        )
    state = load_file(head_file)
    for name, module in (("cross_attention", model.cross_attention), ("head", model.head)):
        module.load_state_dict(
            {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
        )
    return model, tokenizer


def _head_state(model: EmpathyIdentifier) -> dict[str, torch.Tensor]:
    """State of everything but the encoders: the cross-attention block and the head."""
    state = {**_prefixed("cross_attention", model.cross_attention), **_prefixed("head", model.head)}
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
