"""What every command shares: config arguments, the run folder, the terminal and run log, and the
launch of one stage (prepared data, a Ray session, user errors as messages). Imports ``actors``,
``jobs.stages`` and ``pipeline``; never ``jobs.cli``.
"""
