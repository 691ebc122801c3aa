"""Models of EmpRL: tokenizers, the T5 policy with its value head, and the empathy identifiers.

Builders take the typed config and a tokenizer and return float32 modules; ``save_*`` write
Hugging Face ``save_pretrained`` folders (safetensors) that ``load_*`` restore.
"""

from pipeline.models.identifier import (
    NUM_LEVELS,
    EmpathyIdentifier,
    build_identifier,
    encoder_config,
    load_encoder,
    load_identifier,
    save_identifier,
)
from pipeline.models.policy import (
    PolicyOutput,
    PolicyWithValueHead,
    ValueHead,
    build_policy,
    load_policy,
    policy_config,
    save_policy,
    use_fastest_attention,
)
from pipeline.models.sources import ModelSourceError, minilm_path, resolve_source
from pipeline.models.tokenizer import (
    build_identifier_tokenizer,
    build_policy_tokenizer,
    load_tokenizer,
    train_tokenizer,
)

__all__ = [
    "NUM_LEVELS",
    "EmpathyIdentifier",
    "ModelSourceError",
    "PolicyOutput",
    "PolicyWithValueHead",
    "ValueHead",
    "build_identifier",
    "build_identifier_tokenizer",
    "build_policy",
    "build_policy_tokenizer",
    "encoder_config",
    "load_encoder",
    "load_identifier",
    "load_policy",
    "load_tokenizer",
    "minilm_path",
    "policy_config",
    "resolve_source",
    "save_identifier",
    "save_policy",
    "train_tokenizer",
    "use_fastest_attention",
]
