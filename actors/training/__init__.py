"""Supervised training on Ray Train: the empathy identifiers and the SFT policy.

``engines`` (DeepSpeed or DDP: optimiser, scheduler, data-parallel wrapper, checkpointable state;
the PPO learner uses them too), ``harness`` (a Train run that checkpoints, resumes and exports;
``trainer`` ends its controller with it), ``worker`` (a Train worker's rank, engine and resumed
state, alike in both stages), ``identifiers`` and ``sft`` (the two stages' runs), ``sft_spec``,
``sft_worker`` and ``sft_samples`` (SFT's run description, per-worker loop and epoch samples).
Imports ``actors.cluster`` and ``pipeline``.
"""
