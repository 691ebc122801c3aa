"""What ``emprl serve`` speaks: request/response models and the dialogue -> policy context mapping.

Pure (pydantic, no Ray): :mod:`pipeline.serving.messages` holds the HTTP models, bounded by the
``serve`` and ``model`` config sections; :mod:`pipeline.serving.dialogue` turns a request's turns
into the exact context string the policy was trained on.
"""

from pipeline.serving.dialogue import dialogue_context, dialogue_turns, model_version
from pipeline.serving.messages import (
    Dialogue,
    LevelsOut,
    MechanismLevel,
    ModelsOut,
    RequestModels,
    RespondOut,
    RespondRequest,
    Sampling,
    ScoreOut,
    ScoreRequest,
    request_models,
    resolve_sampling,
)

__all__ = [
    "Dialogue",
    "LevelsOut",
    "MechanismLevel",
    "ModelsOut",
    "RequestModels",
    "RespondOut",
    "RespondRequest",
    "Sampling",
    "ScoreOut",
    "ScoreRequest",
    "dialogue_context",
    "dialogue_turns",
    "model_version",
    "request_models",
    "resolve_sampling",
]
