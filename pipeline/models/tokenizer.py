"""Tokenizers: train a T5-style one on local text, or load one from a folder or the hub.

A trained tokenizer is BPE over Metaspace words (sentencepiece style) with byte fallback, so any
Unicode text encodes without ``<unk>``; special tokens follow T5 (``<pad>`` 0, ``</s>`` 1,
``<unk>`` 2) and every encoded text ends with ``</s>``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import cast

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pipeline.config import IdentifiersConfig, ModelConfig
from pipeline.models.sources import load_pretrained, resolve_source

logger = logging.getLogger(__name__)

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS: tuple[str, str, str] = (PAD, EOS, UNK)
"""Special tokens in id order, as in T5: pad 0, eos 1, unk 2."""

BYTE_TOKENS: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))
"""Byte-fallback pieces (``<0x00>`` ... ``<0xFF>``), the last 256 ids of a trained vocabulary."""

MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + len(BYTE_TOKENS) + 125
"""Smallest trainable vocabulary: specials, bytes, and room for an alphabet and some merges."""

MAX_ALPHABET = 200
"""Most frequent characters kept as pieces; rarer characters are spelled with byte pieces."""


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a T5-style tokenizer on ``texts`` with exactly ``vocab_size`` ids.

    Normalisation is NFKC with runs of whitespace collapsed and the ends stripped (like T5's
    sentencepiece ``nmt_nfkc``); decoding restores ordinary English text exactly.

    Raises:
        ValueError: ``vocab_size`` below :data:`MIN_VOCAB_SIZE`, or ``texts`` empty.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size}: a trained tokenizer needs at least {MIN_VOCAB_SIZE} ids "
            f"({len(SPECIAL_TOKENS)} special + {len(BYTE_TOKENS)} byte-fallback + alphabet). "
            "Fix: raise model.vocab_size / identifiers.vocab_size (8000 is the default)."
        )
    seen = 0

    def counted(items: Iterable[str]) -> Iterator[str]:
        nonlocal seen
        for text in items:
            seen += 1
            yield text

    tok = Tokenizer(models.BPE(unk_token=UNK, byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    merges_budget = vocab_size - len(BYTE_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=merges_budget,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=min(MAX_ALPHABET, merges_budget // 2),
        show_progress=False,
    )
    tok.train_from_iterator(counted(texts), trainer)
    if seen == 0:
        raise ValueError("train_tokenizer got no text. Fix: pass the training texts (an iterable of str).")

    # Byte pieces are added after training so BPE never merges them; byte_fallback maps any
    # character outside the vocabulary to them instead of <unk>.
    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for piece in BYTE_TOKENS:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    logger.info("trained a tokenizer on %d texts: %d ids", seen, tok.get_vocab_size())
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # unannotated in transformers
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(name_or_path: str, *, key: str = "tokenizer") -> PreTrainedTokenizerBase:
    """Load a tokenizer from a ``save_pretrained`` folder or a hub name (via ``AutoTokenizer``).

    ``key`` names the config field in error messages.
    """
    source = resolve_source(name_or_path, key=key, need="tokenizer_config.json")
    return load_pretrained(
        lambda s: cast(PreTrainedTokenizerBase, AutoTokenizer.from_pretrained(s)),
        source,
        key=key,
        what="tokenizer",
    )


def build_policy_tokenizer(cfg: ModelConfig, texts: Iterable[str] = ()) -> PreTrainedTokenizerBase:
    """The policy's tokenizer: ``cfg.tokenizer_path``, else ``cfg.name_or_path``'s, else trained on ``texts``."""
    if cfg.tokenizer_path is not None:
        return load_tokenizer(cfg.tokenizer_path, key="model.tokenizer_path")
    if cfg.name_or_path is not None:
        return load_tokenizer(cfg.name_or_path, key="model.name_or_path")
    return train_tokenizer(texts, cfg.vocab_size)


def build_identifier_tokenizer(cfg: IdentifiersConfig, texts: Iterable[str] = ()) -> PreTrainedTokenizerBase:
    """An identifier's tokenizer: the pretrained encoder's own, else trained on ``texts``."""
    if cfg.encoder is not None:
        return load_tokenizer(cfg.encoder, key="identifiers.encoder")
    return train_tokenizer(texts, cfg.vocab_size)
