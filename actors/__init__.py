"""Ray actors and the code that places them, one package per capability.

``cluster`` (the Ray session, placement groups, actor groups) is the ground floor every other
package may import; ``ppo`` (the PPO roles and their controller), ``training`` (Ray Train runs of
the identifiers and the SFT policy, and the training engines), ``inference`` (batch labelling and
evaluation), ``serving`` (Ray Serve) and ``sweep`` (Ray Tune trials) build on it and on
``pipeline``. Nothing here imports ``jobs``.
"""
