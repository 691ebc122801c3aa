"""GPU checks (skipped without CUDA): identifiers score the same on the GPU as on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tiny import SHORT_DIALOGUE as TEXTS

from pipeline.config import IdentifiersConfig
from pipeline.models import build_identifier, save_identifier, train_tokenizer
from pipeline.scoring import EmpathyScorer


def test_gpu_scores_match_cpu_scores(tmp_path: Path) -> None:
    tok = train_tokenizer(TEXTS * 10, 400)
    cfg = IdentifiersConfig(d_model=32, d_ff=64, num_layers=1, num_heads=2)
    for m in ("ER", "IP", "EX"):
        torch.manual_seed(len(m))
        save_identifier(build_identifier(cfg, tok), tok, tmp_path / m)
    contexts, responses = TEXTS[0::2] * 8, TEXTS[1::2] * 8
    cpu = EmpathyScorer.from_folder(tmp_path, max_context_len=32, max_response_len=32, device="cpu")
    gpu = EmpathyScorer.from_folder(tmp_path, max_context_len=32, max_response_len=32, device="cuda")
    a, b = cpu.score(contexts, responses), gpu.score(contexts, responses)
    for m in ("ER", "IP", "EX"):
        np.testing.assert_allclose(a.probs[m], b.probs[m], atol=1e-4)
        assert (a.levels[m] == b.levels[m]).all()
