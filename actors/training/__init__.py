"""Supervised training on Ray Train: the empathy identifiers and the SFT policy.

``engines`` (DeepSpeed or DDP: optimiser, scheduler, data-parallel wrapper, checkpointable state;
the PPO learner uses them too), ``harness`` (a Train run that checkpoints, resumes and exports),
``identifiers`` and ``sft`` (the two stages' runs) and ``sft_worker`` (SFT's per-worker loop).
Imports ``actors.cluster`` and ``pipeline``.
"""
