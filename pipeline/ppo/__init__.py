"""The PPO math of EmpRL as pure functions: typed batches, KL-shaped rewards, GAE, losses, KL control.

``experience`` (the batches roles exchange), ``rewards`` (identifier outputs → scores, running
normalisation), ``kl`` (estimators and controllers), ``advantages`` (GAE, whitening), ``losses``
(clipped policy and value losses) and ``iteration`` (one iteration's prompt schedule, train batch
and mini-batch plan).
"""
