"""What ``emprl serve`` speaks: request/response models and the dialogue -> policy context mapping.

Pure (pydantic, no Ray): :mod:`pipeline.serving.messages` holds the HTTP models, bounded by the
``serve`` and ``model`` config sections; :mod:`pipeline.serving.dialogue` turns a request's turns
into the exact context string the policy was trained on.
"""

from pathlib import Path

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

CHAT_PAGE = Path(__file__).resolve().parent / "static" / "index.html"
"""The chat page served at ``/``: one HTML file with its script and style inline."""

__all__ = [
    "CHAT_PAGE",
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
