"""The T5 decoder pass the policy's users share: teacher-forced or one cached decoding step.

:func:`decode` runs a T5's decoder and ``lm_head`` over encoded prompts: teacher-forced for the
policy's forward passes (:class:`~pipeline.models.policy.PolicyWithValueHead`), one step at a time
with the KV cache for sampling and serving (:mod:`pipeline.generation`).
"""

from __future__ import annotations

from typing import cast

import torch
from transformers import Cache, T5ForConditionalGeneration
from transformers.modeling_outputs import Seq2SeqLMOutput


def decode(
    t5: T5ForConditionalGeneration,
    encoded: torch.Tensor,
    encoder_mask: torch.Tensor,
    decoder_input_ids: torch.Tensor,
    *,
    decoder_mask: torch.Tensor | None = None,
    step: bool = False,
    cache: Cache | None = None,
    hidden_states: bool = True,
) -> Seq2SeqLMOutput:
    """``t5``'s decoder and ``lm_head`` over (B, T) ``decoder_input_ids``, attending to the prompts'
    (B, T_p, d) ``encoded`` states under ``encoder_mask`` (their (B, T_p) mask, or a kernel mask).

    Teacher-forced by default, nothing cached. ``step``: one decoding step that reads the earlier
    steps' keys and values from ``cache`` (``None`` at the first) and returns it extended as
    ``out.cache``. ``hidden_states``: return the decoder's too (:func:`decoder_output`).
    """
    out = t5(
        encoder_outputs=(encoded,),
        attention_mask=encoder_mask,
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_mask,
        cache=cache,
        use_cache=step,
        output_hidden_states=hidden_states,
        return_dict=True,
    )
    return cast(Seq2SeqLMOutput, out)


def decoder_output(out: Seq2SeqLMOutput) -> torch.Tensor:
    """(B, T, d) the decoder's output after its final layer norm, the input of ``lm_head`` (and of
    the value head), from a :func:`decode` with hidden states."""
    assert out.decoder_hidden_states is not None, "decode(..., hidden_states=True)"
    return out.decoder_hidden_states[-1]
