"""Thread-safe counters of one LLM-backed component (calls, repairs, failures, errors).

A component makes its own ``BackendStats`` unless it is handed one; hand the same one to
several instances of one component (say, one extractor per worker thread) to count them
together. Counter names are the component's own, so do not share one between components
of different kinds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class BackendStats:
    def __init__(self, names: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        # Declared names start at zero so a snapshot lists every counter, fired or not.
        self._counts: dict[str, int] = dict.fromkeys(names, 0)

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def declare(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self._counts.setdefault(name, 0)

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __repr__(self) -> str:
        return f"BackendStats({self.snapshot()!r})"
