"""``python -m jobs.cli <command> ...``: the ``emprl`` command without the installed script."""

from jobs.cli.main import main

main()
