"""The command line: ``emprl <command>`` (:mod:`jobs.cli.main`) and one module per command.

Each module parses its arguments, loads the config and hands a stage from :mod:`jobs.stages` to
:func:`jobs.launch.stage.launch`; ``python -m jobs.cli <command> ...`` and ``python -m jobs.cli.<command>
...`` are the same command as ``emprl <command> ...`` (the form for ``ray job submit``). May import
``jobs.launch``, ``jobs.stages``, ``actors`` and ``pipeline``.
"""
