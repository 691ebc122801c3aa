"""The one error a storage location raises: what was tried, where, and the fix."""

from __future__ import annotations


class StorageError(ValueError):
    """A storage location that cannot be used: ``location`` names it, ``fix`` says what to do."""

    def __init__(self, location: str, problem: str, fix: str) -> None:
        super().__init__(f"storage location {location}: {problem}. Fix: {fix}")
        self.location, self.problem, self.fix = location, problem, fix
