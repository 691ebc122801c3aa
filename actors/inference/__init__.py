"""Batch inference on Ray: identifiers labelling ED, and policies generating for evaluation.

``scorer`` (the identifiers as a role), ``labeling`` (a pool of scorers over every split, resumable
by shard) and ``evaluator`` (policies' responses and gold likelihoods, fanned out with scorers).
Imports ``actors.cluster`` and ``pipeline``.
"""
