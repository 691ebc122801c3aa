"""The PPO roles on Ray and the controller that drives them.

One module per role (``rollout``, ``reward``, ``reference``, ``learner``), their groups placed in one
reservation (``roles``), how new weights reach the rollout workers (``weight_sync``), the checkpoint
store, the metrics log (``metrics``), and the controller loop. Imports
``actors.cluster``, ``actors.training.engines`` (the learner's DeepSpeed engine) and ``pipeline``.
"""
