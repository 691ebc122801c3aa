"""``POST /v1/chat/completions``, OpenAI-compatible: the request, messages -> dialogue turns, the answer
and the server-sent-event chunks of a streamed answer.

``user`` messages are the speaker's and ``assistant`` messages the listener's (the policy answers as
the listener); ``system``/``developer`` messages are accepted and left out, since the policy was
trained on dialogue turns only; consecutive messages of one role make one turn. Extras beyond
OpenAI's fields (``emotion``, ``top_k``, ``n_candidates``, ``target_levels``) go in the body, e.g. with
the ``openai`` client's ``extra_body``; every choice carries its levels in an extra ``empathy`` field.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from pipeline.config import ModelConfig, RolloutConfig, ServeConfig
from pipeline.generation import SamplingSettings
from pipeline.serving.dialogue import normalize_text
from pipeline.serving.messages import MAX_SEED, LevelsOut, TargetLevels

_STRICT = ConfigDict(extra="forbid", strict=True)


class RequestFieldError(ValueError):
    """A request that passed the schema but is still wrong, with the field to name in the answer."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class TextPart(BaseModel):
    """A text part of a message's content (OpenAI's list form)."""

    model_config = _STRICT

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; ``content`` is a string or a list of text parts."""

    model_config = _STRICT

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined by a space)."""
        if isinstance(self.content, str):
            return self.content
        return " ".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    model_config = _STRICT

    include_usage: bool = False


def _not_set(value: Any, info: ValidationInfo) -> Any:
    if value not in (None, False):
        raise ValueError(f"{info.field_name} is not supported by this policy; leave it out")
    return value


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request, the fields this service honours, and its extras."""

    model_config = _STRICT

    model: str = Field(description="The served policy's name (GET /v1/models) or `emprl`.")
    messages: list[ChatMessage] = Field(min_length=1, description="The dialogue, oldest first.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens per choice.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Same as max_tokens.")
    temperature: float | None = Field(default=None, ge=0, le=2, description="0 is greedy decoding.")
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, description="Choices to return.")
    seed: int | None = Field(default=None, description="Same seed, same choices.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, description="Accepted and ignored.")
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    tools: list[Any] | None = None
    # extras
    emotion: str | None = Field(default=None, max_length=100, description="The speaker's emotion label.")
    top_k: int | None = Field(default=None, ge=0, le=200, description="Top-k (0 disables it).")
    n_candidates: int = Field(default=1, ge=1, description="Candidates sampled per choice.")
    target_levels: TargetLevels | None = Field(default=None, validate_default=True)

    _unsupported = field_validator("stop", "logprobs", "tools")(_not_set)

    @field_validator("target_levels")
    @classmethod
    def _targets(cls, targets: TargetLevels | None, info: ValidationInfo) -> TargetLevels | None:
        if targets is None and info.data.get("n_candidates", 1) > 1:
            raise ValueError("n_candidates > 1 chooses the candidate closest to target_levels: give them")
        return targets


def check_chat(req: ChatCompletionRequest, serve: ServeConfig, model: ModelConfig) -> None:
    """The limits that depend on the service's config.

    Raises:
        RequestFieldError: naming the field over its limit.
    """
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name)
        if value is not None and value > model.max_target_len:
            raise RequestFieldError(
                name, f"at most {model.max_target_len} tokens (the policy's response length), got {value}"
            )
    if req.n > serve.max_choices:
        raise RequestFieldError("n", f"at most {serve.max_choices} choices, got {req.n}")
    if req.n_candidates > serve.max_candidates:
        raise RequestFieldError(
            "n_candidates", f"at most {serve.max_candidates} candidates, got {req.n_candidates}"
        )
    if req.stream and req.n_candidates > 1:
        raise RequestFieldError(
            "stream",
            "a streamed answer cannot choose among candidates (they are scored once complete): "
            "use stream=false with n_candidates > 1",
        )


def chat_turns(messages: Sequence[ChatMessage], serve: ServeConfig) -> list[str]:
    """The dialogue turns of ``messages`` (oldest first, the last one the speaker's).

    Raises:
        RequestFieldError: no user message, a last message that is not the user's, an empty or too
            long message, or more turns than ``serve.max_turns``.
    """
    turns: list[str] = []
    roles: list[str] = []
    for i, message in enumerate(messages):
        if message.role in ("system", "developer"):
            continue
        text = normalize_text(message.text())
        if not text:
            raise RequestFieldError(f"messages.{i}.content", "a message needs some text")
        if len(text) > serve.max_text_chars:
            raise RequestFieldError(
                f"messages.{i}.content", f"at most {serve.max_text_chars} characters, got {len(text)}"
            )
        if roles and roles[-1] == message.role:
            turns[-1] = f"{turns[-1]} {text}"
            if len(turns[-1]) > serve.max_text_chars:
                raise RequestFieldError(
                    f"messages.{i}.content",
                    f"consecutive {message.role} messages make one turn of at most "
                    f"{serve.max_text_chars} characters",
                )
        else:
            turns.append(text)
            roles.append(message.role)
    if not turns:
        raise RequestFieldError("messages", "give at least one user message")
    if roles[-1] != "user":
        raise RequestFieldError("messages", "the last message must be the user's (the policy answers it)")
    if len(turns) > serve.max_turns:
        raise RequestFieldError("messages", f"at most {serve.max_turns} turns, got {len(turns)}")
    return turns


def chat_sampling(
    req: ChatCompletionRequest, defaults: RolloutConfig, *, max_target_len: int, seed: int
) -> SamplingSettings:
    """The sampling of one choice: the request's values, else ``rollout.*``; ``temperature: 0`` is
    greedy decoding (top-k 1)."""
    max_new = req.max_completion_tokens or req.max_tokens or min(defaults.max_new_tokens, max_target_len)
    temperature = defaults.temperature if req.temperature is None else req.temperature
    top_k = defaults.top_k if req.top_k is None else req.top_k
    if temperature == 0:
        temperature, top_k = 1.0, 1
    return SamplingSettings(
        temperature=temperature,
        top_k=top_k,
        top_p=defaults.top_p if req.top_p is None else req.top_p,
        min_new_tokens=min(defaults.min_new_tokens, max_new),
        max_new_tokens=max_new,
        seed=seed % (MAX_SEED + 1),
    )


class ChatAnswer(BaseModel):
    """The assistant's message of a choice."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    """One choice, with its empathy levels."""

    index: int
    message: ChatAnswer
    finish_reason: Literal["stop", "length"]
    logprobs: None = None
    empathy: LevelsOut


class Usage(BaseModel):
    """Token counts: the context (per choice, as each choice reads it) and the returned completions."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """OpenAI's ``chat.completion`` object."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str = Field(description="The policy's version (a hash of its weights).")
    choices: list[ChatChoice]
    usage: Usage


def completion_id() -> str:
    """A fresh ``chatcmpl-...`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    """Seconds since the epoch, OpenAI's ``created``."""
    return int(time.time())


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def chunk(
    head: dict[str, Any], index: int, delta: dict[str, str], finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with one choice's delta (``head``: id, created, model,
    system_fingerprint)."""
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}
    return {**head, "object": "chat.completion.chunk", "choices": [choice]}
