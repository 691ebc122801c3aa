"""A bounded closed-loop load: ``clients`` threads, each sending its next request as soon as the last one
is answered, until stopped; every request recorded as ``(sent, answered, reply)`` (monotonic seconds)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

R = TypeVar("R")


class Load(Generic[R]):
    """``send(seed)`` from ``clients`` threads (client ``k`` uses seeds ``1000 k``, ``1000 k + 1``, …)."""

    def __init__(self, send: Callable[[int], R], clients: int) -> None:
        self.send = send
        self.results: list[tuple[float, float, R]] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)
        ]
        self.started = 0.0

    def _client(self, k: int) -> None:
        seed = 1000 * k
        while not self._stop.is_set():
            sent = time.monotonic()
            reply = self.send(seed)
            with self._lock:
                self.results.append((sent, time.monotonic(), reply))
            seed += 1

    def start(self) -> Load[R]:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, join_s: float = 120.0) -> float:
        """Stop sending; wait for the requests in flight; returns when the load stopped."""
        self._stop.set()
        ended = time.monotonic()
        for thread in self._threads:
            thread.join(timeout=join_s)
        return ended
