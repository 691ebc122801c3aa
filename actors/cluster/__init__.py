"""Cluster plumbing shared by every capability: the Ray session, placement groups, actor groups.

``session`` joins or starts a cluster (loopback locally) and sets every worker's thread limits;
``placement`` turns a stage's roles into one placement group's bundles; ``group`` makes N actors of
one role behave like one instance, replacing the ones that die; ``recovery`` tells a lost node from a
dead process and waits for a lost node's bundles to be re-reserved. Imports only ``pipeline``.
"""
