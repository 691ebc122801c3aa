"""Ray Tune pieces of a sweep: the search space as ``ray.tune`` objects, a trial's reservation,
its dev-slice metric and checkpoint restore. Imports ``actors.cluster``, ``actors.ppo``,
``actors.inference`` and ``pipeline``.
"""
