"""A dynamic batcher: concurrent callers' items are merged into one call of a batch function.

A worker runs many tasks as threads of one process; each wants a forward pass of the same
model for a handful of texts. One background thread collects what they submit and calls
the batch function once for up to ``max_items`` items, or once ``max_wait_ms`` have passed
since the oldest waiting item arrived, whichever comes first. While a batch runs, new items
queue up, so under load batches fill by themselves and an idle model answers a lone caller
after at most ``max_wait_ms``.

Each caller gets the results of its own items, in order; if the batch function raises,
every caller in that batch gets the exception.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """An item was submitted after ``close``."""


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    largest: int = 0


class Batcher(Generic[T, R]):
    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        max_items: int = 32,
        max_wait_ms: float = 5.0,
        name: str = "batcher",
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, not {max_wait_ms}")
        self.fn = fn
        self.max_items = max_items
        self.max_wait_s = max_wait_ms / 1000.0
        self.name = name
        self.stats = BatcherStats()
        self._pending: deque[tuple[float, T, Future[R]]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # callers ----------------------------------------------------------------------
    def submit(self, item: T) -> Future[R]:
        return self.submit_many([item])[0]

    def submit_many(self, items: Sequence[T]) -> list[Future[R]]:
        """Queue ``items`` together (they stay contiguous, so one caller's items are not
        scattered over more batches than they need)."""
        futures: list[Future[R]] = [Future() for _ in items]
        now = time.monotonic()
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"{self.name} is closed")
            self._start()
            self._pending.extend((now, item, fut) for item, fut in zip(items, futures, strict=True))
            self._cond.notify()
        return futures

    def run(self, items: Sequence[T], timeout: float | None = None) -> list[R]:
        """Submit ``items`` and wait for their results (the first error is raised)."""
        return [fut.result(timeout) for fut in self.submit_many(items)]

    def close(self, timeout: float | None = 10.0) -> None:
        """Refuse new items, finish the queued ones, stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> Batcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the batching thread --------------------------------------------------------------
    def _start(self) -> None:
        # Started on first use, not in __init__: a batcher built before a fork would
        # otherwise leave the child a thread that does not exist there.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._call(batch)

    def _collect(self) -> list[tuple[float, T, Future[R]]] | None:
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._pending[0][0] + self.max_wait_s
            while len(self._pending) < self.max_items and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            size = min(self.max_items, len(self._pending))
            return [self._pending.popleft() for _ in range(size)]

    def _call(self, batch: list[tuple[float, T, Future[R]]]) -> None:
        live = [(item, fut) for _, item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        self.stats.batches += 1
        self.stats.items += len(live)
        self.stats.largest = max(self.stats.largest, len(live))
        try:
            results = list(self.fn([item for item, _ in live]))
            if len(results) != len(live):
                raise RuntimeError(
                    f"{self.name}: the batch function returned {len(results)} results for {len(live)} items"
                )
        except BaseException as exc:  # every caller of this batch must hear of it
            for _, fut in live:
                fut.set_exception(exc)
            return
        for (_, fut), result in zip(live, results, strict=True):
            fut.set_result(result)
