"""The HTTP models of ``emprl serve``: strict requests (unknown fields and wrong types are errors) and
the responses.

The base classes carry the fixed bounds (sampling ranges); :func:`request_models` derives the
classes a service validates with, bounded by its ``serve`` section (turns, text length) and by
``model.max_target_len`` (``max_new_tokens``), so the OpenAPI page shows the real limits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from pipeline.config import ModelConfig, RolloutConfig, ServeConfig
from pipeline.generation import SamplingSettings

MAX_SEED = 2**63 - 1
LevelName = Literal["none", "weak", "strong"]
LEVEL_NAMES: tuple[LevelName, LevelName, LevelName] = ("none", "weak", "strong")

_STRICT = ConfigDict(extra="forbid", strict=True)
_NOT_BLANK = r"\S"


def _text(max_chars: int) -> Any:
    return Annotated[str, StringConstraints(max_length=max_chars, pattern=_NOT_BLANK)]


class Sampling(BaseModel):
    """Sampling of one response; every field left out takes the service default (``rollout.*``)."""

    model_config = _STRICT

    temperature: float | None = Field(default=None, gt=0, le=2, description="Softmax temperature, (0, 2].")
    top_k: int | None = Field(default=None, ge=0, le=200, description="Top-k, 0..200 (0 disables it).")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus threshold, (0, 1].")
    max_new_tokens: int | None = Field(default=None, ge=1, description="Most response tokens.")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Seed of this response (same seed, same response); random if left out.",
    )


class Dialogue(BaseModel):
    """A dialogue, oldest turn first; turns alternate and the last one is the speaker's."""

    model_config = _STRICT

    turns: list[str] = Field(min_length=1, description="Utterances, oldest first; the last is the speaker's.")
    emotion: str | None = Field(default=None, description="The speaker's emotion label (ED's 32 labels).")
    situation: str | None = Field(
        default=None,
        description="The speaker's situation; kept for the record, not part of the policy's context.",
    )


class TargetLevels(BaseModel):
    """Requested empathy levels (0 none, 1 weak, 2 strong) of any of the three mechanisms."""

    model_config = _STRICT

    er: int | None = Field(default=None, ge=0, le=2, description="Emotional reactions.")
    ip: int | None = Field(default=None, ge=0, le=2, description="Interpretations.")
    ex: int | None = Field(default=None, ge=0, le=2, description="Explorations.")

    @model_validator(mode="after")
    def _some(self) -> TargetLevels:
        if self.er is None and self.ip is None and self.ex is None:
            raise ValueError("give a target level (0, 1 or 2) for at least one of er, ip, ex")
        return self

    def by_mechanism(self) -> dict[str, int]:
        """``ER``/``IP``/``EX`` -> target level, for the mechanisms given."""
        return {m.upper(): v for m, v in (("er", self.er), ("ip", self.ip), ("ex", self.ex)) if v is not None}


def _targets_for_candidates(targets: TargetLevels | None, info: ValidationInfo) -> TargetLevels | None:
    if targets is None and info.data.get("n_candidates", 1) > 1:
        raise ValueError("n_candidates > 1 chooses the candidate closest to target_levels: give them")
    return targets


class RespondRequest(Dialogue):
    """``POST /v1/respond``: a dialogue, optional sampling settings and empathy-aware decoding."""

    sampling: Sampling = Field(default_factory=Sampling)
    n_candidates: int = Field(
        default=1,
        ge=1,
        description="Responses to sample (seeds seed, seed+1, ...); the one whose levels are closest to "
        "`target_levels` is returned.",
    )
    target_levels: TargetLevels | None = Field(
        default=None,
        validate_default=True,
        description="Empathy levels to aim for; needed when n_candidates > 1.",
    )
    return_candidates: bool = Field(default=False, description="Also return every candidate with its levels.")

    _targets = field_validator("target_levels")(_targets_for_candidates)


class ScoreRequest(BaseModel):
    """``POST /v1/score``: a (context, response) pair for the identifiers."""

    model_config = _STRICT

    context: str = Field(description="The context as the policy sees it (e.g. /v1/respond's `context`).")
    response: str = Field(description="The listener response to score.")


class RequestModels(NamedTuple):
    """The request classes of one service, bounded by its config."""

    respond: type[RespondRequest]
    score: type[ScoreRequest]


def request_models(serve: ServeConfig, model: ModelConfig) -> RequestModels:
    """:class:`RespondRequest` and :class:`ScoreRequest` with ``serve``'s turn and text limits and
    ``max_new_tokens <= model.max_target_len``."""
    text = _text(serve.max_text_chars)
    sampling = create_model(
        "Sampling",
        __base__=Sampling,
        max_new_tokens=(
            int | None,
            Field(default=None, ge=1, le=model.max_target_len, description="Most response tokens."),
        ),
    )
    respond = create_model(
        "RespondRequest",
        __base__=RespondRequest,
        turns=(
            list[text],  # type: ignore[valid-type]
            Field(
                min_length=1,
                max_length=serve.max_turns,
                description=f"1 to {serve.max_turns} utterances of at most {serve.max_text_chars} "
                "characters, oldest first; the last is the speaker's.",
            ),
        ),
        emotion=(
            _text(100) | None,
            Field(default=None, description="The speaker's emotion label (ED's labels)."),
        ),
        situation=(
            text | None,
            Field(default=None, description="The speaker's situation; not part of the policy's context."),
        ),
        sampling=(sampling, Field(default_factory=sampling)),
        n_candidates=(
            int,
            Field(
                default=1,
                ge=1,
                le=serve.max_candidates,
                description=f"Responses to sample, 1 to {serve.max_candidates} (seeds seed, seed+1, ...); "
                "the one whose levels are closest to `target_levels` is returned.",
            ),
        ),
    )
    score = create_model(
        "ScoreRequest",
        __base__=ScoreRequest,
        context=(
            _text(serve.max_turns * (serve.max_text_chars + 16)),
            Field(description="The context as the policy sees it (e.g. /v1/respond's `context`)."),
        ),
        response=(
            Annotated[str, StringConstraints(max_length=serve.max_text_chars)],
            Field(description="The listener response to score."),
        ),
    )
    return RequestModels(respond, score)


def resolve_sampling(
    sampling: Sampling, defaults: RolloutConfig, *, max_target_len: int, seed: int
) -> SamplingSettings:
    """The settings of one request: its own values, else ``defaults`` (``rollout.*``), with
    ``max_new_tokens`` capped at ``max_target_len`` and ``seed`` when the request gives none."""
    max_new = sampling.max_new_tokens or min(defaults.max_new_tokens, max_target_len)
    return SamplingSettings(
        temperature=defaults.temperature if sampling.temperature is None else sampling.temperature,
        top_k=defaults.top_k if sampling.top_k is None else sampling.top_k,
        top_p=defaults.top_p if sampling.top_p is None else sampling.top_p,
        min_new_tokens=min(defaults.min_new_tokens, max_new),
        max_new_tokens=max_new,
        seed=seed if sampling.seed is None else sampling.seed,
    )


class MechanismLevel(BaseModel):
    """One mechanism's predicted level and the identifier's probability of each level."""

    level: int = Field(ge=0, le=2, description="Argmax level: 0 none, 1 weak, 2 strong.")
    label: LevelName
    probs: list[float] = Field(description="Probabilities of levels 0, 1, 2 (sum to 1).")


class LevelsOut(BaseModel):
    """EPITOME levels of a response: emotional reactions, interpretations, explorations."""

    er: MechanismLevel
    ip: MechanismLevel
    ex: MechanismLevel

    @classmethod
    def from_probs(cls, probs: Mapping[str, Sequence[float]]) -> LevelsOut:
        """From mechanism (``ER``/``IP``/``EX``) -> the three level probabilities."""
        out = {}
        for mechanism, p in probs.items():
            level = max(range(len(p)), key=lambda k: p[k])
            out[mechanism.lower()] = MechanismLevel(
                level=level, label=LEVEL_NAMES[level], probs=[float(x) for x in p]
            )
        return cls.model_validate(out)


class ModelInfo(BaseModel):
    """A served model: its name and the version of its weights (a content hash)."""

    name: str
    version: str
    runtime: str = Field(
        default="", description="Where and in what precision it runs (`cpu float32`, `cuda bfloat16`)."
    )


class CandidateOut(BaseModel):
    """One sampled candidate of empathy-aware decoding."""

    response: str
    levels: LevelsOut
    seed: int
    distance: float | None = Field(description="Expected level distance to the targets (lower is closer).")


class RespondOut(BaseModel):
    """``POST /v1/respond``'s answer."""

    response: str
    levels: LevelsOut
    context: str = Field(description="The context string the policy answered.")
    sampling: dict[str, float | int] = Field(description="The settings used, seed included.")
    model: ModelInfo
    identifiers: ModelInfo
    target_levels: dict[str, int] | None = Field(default=None, description="The targets aimed for.")
    chosen: int = Field(default=0, description="Index of the returned response among the candidates.")
    distance: float | None = Field(
        default=None,
        description="The returned response's expected level distance to the targets: the sum over the "
        "targeted mechanisms of sum_k P(level k) * |k - target|.",
    )
    candidates: list[CandidateOut] | None = Field(
        default=None, description="Every candidate, in sampling order (with return_candidates)."
    )


class ScoreOut(BaseModel):
    """``POST /v1/score``'s answer."""

    levels: LevelsOut
    identifiers: ModelInfo


class ModelCard(BaseModel):
    """A model in OpenAI's list format (``GET /v1/models`` of an OpenAI client)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "emprl"


class ModelsOut(BaseModel):
    """``GET /v1/models``: what is served and its request limits; ``object``/``data`` make it OpenAI's
    model list too."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
    policy: ModelInfo
    identifiers: ModelInfo
    mechanisms: list[str]
    defaults: dict[str, float | int] = Field(description="Sampling used where a request gives none.")
    limits: dict[str, int] = Field(description="Request limits (turns, characters, tokens, bytes).")
