"""The OpenAI-compatible endpoint's pure half, empathy-aware candidate choice and streamed text deltas."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.config import load_config
from pipeline.generation import TextDeltas
from pipeline.serving.candidates import closest, level_distance
from pipeline.serving.chat import (
    ChatCompletionRequest,
    ChatMessage,
    RequestFieldError,
    chat_sampling,
    chat_turns,
    check_chat,
)

pytestmark = pytest.mark.unit

CFG = load_config("local", ["serve.max_turns=3", "serve.max_text_chars=20", "model.max_target_len=24"])


def msgs(*pairs: tuple[str, Any]) -> list[ChatMessage]:
    return [ChatMessage.model_validate({"role": r, "content": c}) for r, c in pairs]


def test_messages_map_onto_turns_ending_with_the_speaker() -> None:
    turns = chat_turns(
        msgs(
            ("system", "You are kind."),
            ("user", "I lost  my\njob."),
            ("assistant", "Oh no."),
            ("user", [{"type": "text", "text": "Today."}, {"type": "text", "text": "Sad."}]),
        ),
        CFG.serve,
    )
    assert turns == ["I lost my job.", "Oh no.", "Today. Sad."]
    # consecutive messages of one role are one turn
    assert chat_turns(msgs(("user", "a"), ("user", "b")), CFG.serve) == ["a b"]


@pytest.mark.parametrize(
    ("messages", "field", "words"),
    [
        ([("system", "hi")], "messages", "user message"),
        ([("user", "hi"), ("assistant", "hello")], "messages", "last message"),
        ([("user", "   ")], "messages.0.content", "some text"),
        ([("user", "x" * 21)], "messages.0.content", "20 characters"),
        ([("user", "x" * 12), ("user", "y" * 12)], "messages.1.content", "one turn"),
        (
            [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")],
            "messages",
            "3",
        ),
    ],
)
def test_bad_dialogues_name_the_field(messages: list[tuple[str, str]], field: str, words: str) -> None:
    with pytest.raises(RequestFieldError, match=words) as info:
        chat_turns(msgs(*messages), CFG.serve)
    assert info.value.field == field


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "emprl", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_schema_refuses_what_it_cannot_honour() -> None:
    for fields, loc in (
        ({"stop": ["\n"]}, "stop"),
        ({"logprobs": True}, "logprobs"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"n_candidates": 3}, "target_levels"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ):
        with pytest.raises(ValidationError) as info:
            request(**fields)
        assert loc in {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}, fields
    assert request(stop=None, logprobs=False, user="u").model == "emprl"


def test_config_limits_and_streaming_candidates_are_refused() -> None:
    for fields, field in (
        ({"max_tokens": 25}, "max_tokens"),
        ({"max_completion_tokens": 99}, "max_completion_tokens"),
        ({"n": CFG.serve.max_choices + 1}, "n"),
        ({"n_candidates": CFG.serve.max_candidates + 1, "target_levels": {"er": 1}}, "n_candidates"),
        ({"stream": True, "n_candidates": 2, "target_levels": {"er": 1}}, "stream"),
    ):
        with pytest.raises(RequestFieldError) as info:
            check_chat(request(**fields), CFG.serve, CFG.model)
        assert info.value.field == field
    check_chat(request(max_tokens=24, n=2, stream=True), CFG.serve, CFG.model)


def test_sampling_takes_the_request_then_the_rollout_defaults() -> None:
    r = CFG.rollout
    s = chat_sampling(request(), r, max_target_len=24, seed=-1)
    assert (s.temperature, s.top_k, s.top_p) == (r.temperature, r.top_k, r.top_p)
    assert s.max_new_tokens == min(r.max_new_tokens, 24) and 0 <= s.seed
    s = chat_sampling(
        request(temperature=0.7, top_p=0.5, max_tokens=9, top_k=3), r, max_target_len=24, seed=4
    )
    assert (s.temperature, s.top_k, s.top_p, s.max_new_tokens, s.seed) == (0.7, 3, 0.5, 9, 4)
    greedy = chat_sampling(request(temperature=0), r, max_target_len=24, seed=1)
    assert (greedy.temperature, greedy.top_k) == (1.0, 1)
    assert (
        chat_sampling(
            request(max_completion_tokens=5, max_tokens=9), r, max_target_len=24, seed=1
        ).max_new_tokens
        == 5
    )


def test_distance_is_the_expected_level_error_over_targeted_mechanisms() -> None:
    sure_strong = {"ER": [0.0, 0.0, 1.0], "IP": [1.0, 0.0, 0.0], "EX": [0.5, 0.5, 0.0]}
    assert level_distance(sure_strong, {"ER": 2}) == 0
    assert level_distance(sure_strong, {"ER": 0, "IP": 0}) == 2
    assert level_distance(sure_strong, {"EX": 2}) == pytest.approx(0.5 * 2 + 0.5 * 1)
    unsure = {"ER": [0.2, 0.3, 0.5], "IP": [1.0, 0.0, 0.0], "EX": [1.0, 0.0, 0.0]}
    index, distances = closest([unsure, sure_strong, sure_strong], {"ER": 2})
    assert index == 1 and distances == pytest.approx([0.2 * 2 + 0.3, 0.0, 0.0])  # first of the ties
    assert closest([unsure], {"IP": 0}) == (0, [0.0])
    with pytest.raises(ValueError, match="no candidates"):
        closest([], {"ER": 1})


def test_streamed_deltas_concatenate_to_the_final_text_and_never_take_text_back() -> None:
    deltas = TextDeltas()
    growing = ["I", "I am", "I am", "I am so", "I am so sorry", "I am so sorry.", "I am so sorry."]
    sent = [deltas.update(text) for text in growing]
    assert "".join(sent) == growing[-1]
    assert sent[2] == "" and sent[-1] == ""
    # a decoding that is not an extension is held back until one is
    held = TextDeltas()
    assert held.update("caf") == "caf"
    assert held.update("cae") == ""
    assert held.update("café") == "é"
