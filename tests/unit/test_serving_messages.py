"""`emprl serve`'s pure half: dialogue -> context, bounded strict request models, sampling defaults, config checks."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.config import ConfigError, DataConfig, load_config
from pipeline.data.ed import Turn, format_context
from pipeline.serving import LevelsOut, dialogue_context, dialogue_turns, request_models, resolve_sampling

pytestmark = pytest.mark.unit

CFG = load_config("local", ["serve.max_turns=4", "serve.max_text_chars=50", "model.max_target_len=20"])
MODELS = request_models(CFG.serve, CFG.model)


def test_roles_alternate_backwards_from_the_speakers_last_turn() -> None:
    turns = dialogue_turns(["a", "b", "c"])
    assert [(t.idx, t.role, t.text) for t in turns] == [
        (1, "speaker", "a"),
        (2, "listener", "b"),
        (3, "speaker", "c"),
    ]
    assert [t.role for t in dialogue_turns(["x", "y"])] == ["listener", "speaker"]


def test_context_is_the_training_format_of_the_same_history() -> None:
    history = [
        Turn(1, "speaker", "I lost my job."),
        Turn(2, "listener", "Oh no!"),
        Turn(3, "speaker", "Yes, today."),
    ]
    for data in (
        DataConfig(),
        DataConfig(history_turns=2),
        DataConfig(speaker_tags=True, prepend_emotion=True, turn_separator=" | "),
    ):
        served = dialogue_context(["I lost my job.", "Oh no!", "Yes, today."], "sad", data)
        assert served == format_context(history, "sad", data)
    tagged = DataConfig(speaker_tags=True, prepend_emotion=True, history_turns=2)
    assert (
        dialogue_context(["a", "b  \n c", "d"], " sad ", tagged)
        == "Emotion: sad </s> Listener: b c </s> Speaker: d"
    )
    assert dialogue_context(["hi"], None, DataConfig()) == "hi"


def test_a_policy_trained_with_the_emotion_needs_one() -> None:
    with pytest.raises(ValueError, match="prepend_emotion"):
        dialogue_context(["hi"], None, DataConfig(prepend_emotion=True))


def _errors(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        MODELS.respond.model_validate(body)
    return {".".join(str(p) for p in e["loc"]): e["type"] for e in info.value.errors()}


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        ({"turns": []}, "turns", "too_short"),
        ({"turns": ["a"] * 5}, "turns", "too_long"),
        ({"turns": ["a", "   "]}, "turns.1", "string_pattern_mismatch"),
        ({"turns": ["x" * 51]}, "turns.0", "string_too_long"),
        ({"turns": "hello"}, "turns", "list_type"),
        ({"turns": [3]}, "turns.0", "string_type"),
        ({}, "turns", "missing"),
        ({"turns": ["a"], "temperature": 1.0}, "temperature", "extra_forbidden"),
        ({"turns": ["a"], "sampling": {"temperature": 0}}, "sampling.temperature", "greater_than"),
        ({"turns": ["a"], "sampling": {"temperature": 2.5}}, "sampling.temperature", "less_than_equal"),
        ({"turns": ["a"], "sampling": {"temperature": "0.5"}}, "sampling.temperature", "float_type"),
        ({"turns": ["a"], "sampling": {"top_k": 201}}, "sampling.top_k", "less_than_equal"),
        ({"turns": ["a"], "sampling": {"top_k": True}}, "sampling.top_k", "int_type"),
        ({"turns": ["a"], "sampling": {"top_p": 0}}, "sampling.top_p", "greater_than"),
        ({"turns": ["a"], "sampling": {"top_p": 1.5}}, "sampling.top_p", "less_than_equal"),
        (
            {"turns": ["a"], "sampling": {"max_new_tokens": 0}},
            "sampling.max_new_tokens",
            "greater_than_equal",
        ),
        ({"turns": ["a"], "sampling": {"max_new_tokens": 21}}, "sampling.max_new_tokens", "less_than_equal"),
        ({"turns": ["a"], "sampling": {"seed": -1}}, "sampling.seed", "greater_than_equal"),
        ({"turns": ["a"], "sampling": {"seed": 1.5}}, "sampling.seed", "int_type"),
        ({"turns": ["a"], "sampling": {"beam": 2}}, "sampling.beam", "extra_forbidden"),
        ({"turns": ["a"], "situation": "s" * 51}, "situation", "string_too_long"),
    ],
)
def test_each_bad_field_is_named(body: dict[str, Any], field: str, kind: str) -> None:
    assert _errors(body) == {field: kind}


def test_several_bad_fields_are_all_named() -> None:
    errors = _errors({"turns": [], "sampling": {"temperature": 9, "top_p": 2}})
    assert set(errors) == {"turns", "sampling.temperature", "sampling.top_p"}


def test_score_request_bounds() -> None:
    ok = MODELS.score.model_validate({"context": "hi </s> there", "response": ""})
    assert ok.response == ""
    with pytest.raises(ValidationError, match="response"):
        MODELS.score.model_validate({"context": "hi", "response": "r" * 51})
    with pytest.raises(ValidationError, match=r"turns\n  Extra inputs are not permitted"):
        MODELS.score.model_validate({"context": "hi", "response": "ok", "turns": []})


def test_openapi_schema_shows_the_configured_limits() -> None:
    schema = MODELS.respond.model_json_schema()
    assert schema["properties"]["turns"]["maxItems"] == 4
    assert schema["properties"]["turns"]["items"]["maxLength"] == 50
    sampling = schema["$defs"]["Sampling"]["properties"]
    assert sampling["max_new_tokens"]["anyOf"][0]["maximum"] == 20


def test_sampling_defaults_come_from_rollout_and_respect_the_target_length() -> None:
    request = MODELS.respond.model_validate({"turns": ["a"], "sampling": {"top_k": 0}})
    settings = resolve_sampling(request.sampling, CFG.rollout, max_target_len=20, seed=7)
    r = CFG.rollout
    assert (settings.temperature, settings.top_k, settings.top_p, settings.seed) == (
        r.temperature,
        0,
        r.top_p,
        7,
    )
    assert settings.max_new_tokens == min(r.max_new_tokens, 20)
    short = MODELS.respond.model_validate({"turns": ["a"], "sampling": {"max_new_tokens": 2, "seed": 3}})
    settings = resolve_sampling(short.sampling, CFG.rollout, max_target_len=20, seed=7)
    assert (settings.min_new_tokens, settings.max_new_tokens, settings.seed) == (2, 2, 3)


def test_levels_are_the_argmax_with_names() -> None:
    levels = LevelsOut.from_probs({"ER": [0.1, 0.2, 0.7], "IP": [0.5, 0.3, 0.2], "EX": [0.2, 0.6, 0.2]})
    assert (levels.er.level, levels.er.label, levels.ip.level, levels.ex.label) == (2, "strong", 0, "weak")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("serve.max_ongoing_requests=4", "serve.max_ongoing_requests"),
        ("serve.port=0", "serve.port"),
        ("serve.proxy_location=Everywhere", "serve.proxy_location"),
        ("serve.max_queued_requests=0", "serve.max_queued_requests"),
        ("serve.request_timeout_s=0", "serve.request_timeout_s"),
        ("serve.api_key_env='my secret key'", "serve.api_key_env"),
        ("serve.max_body_bytes=0", "serve.max_body_bytes"),
        ("serve.batch_wait_timeout_s=-1", "serve.batch_wait_timeout_s"),
    ],
)
def test_bad_serve_settings_name_the_key_and_the_fix(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}=.*Fix: "):
        load_config("local", [override])
