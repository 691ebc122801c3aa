"""Evaluation of policies against gold empathy levels: Emp-F1 and the paper's metrics, with a report.

``classification`` (accuracy, F1, confusion, Emp-F1), ``text`` (Dist-n, BLEU, ROUGE-L),
``bootstrap`` (paired intervals), ``suite`` (every metric of a set of policies on a labelled split),
``figures`` and ``report`` (Markdown/HTML).
"""
