"""An event loop in a daemon thread that a client owns, reachable from any thread or loop.

httpx connections and asyncio semaphores are bound to the loop that first uses them. A
client that runs all of its I/O on its own loop can be called from worker threads
(blocking) and from other event loops (awaiting) alike, with one pool and one limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """A loop running forever in a daemon thread, started on first use."""

    def __init__(self, name: str = "llm-loop") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def started(self) -> bool:
        return self._loop is not None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._stopped:
                raise RuntimeError(f"{self.name}: loop is stopped")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=_run_forever, args=(loop, ready), name=self.name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def on_loop(self) -> bool:
        """True when called from a coroutine running on this loop."""
        try:
            return self._loop is not None and asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        try:
            loop = self.loop()
        except RuntimeError:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Block the calling thread until ``coro`` has run on this loop."""
        if self.on_loop():
            coro.close()
            raise RuntimeError(f"{self.name}: blocking call from its own loop would deadlock")
        return self.submit(coro).result()

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run on this loop, from any loop (cancellation propagates)."""
        if self.on_loop():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    async def iterate(self, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """Iterate ``source`` on this loop and hand its items to the calling loop."""
        if self.on_loop():
            async for item in source:
                yield item
            return
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()

        def hand(done: bool, item: Any) -> None:
            try:
                caller.call_soon_threadsafe(queue.put_nowait, (done, item))
            except RuntimeError:  # the consumer's loop is gone; nobody to tell
                pass

        async def pump() -> None:
            try:
                async for item in source:
                    hand(False, item)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # re-raised in the consumer
                hand(True, exc)
            else:
                hand(True, None)

        future = self.submit(pump())
        try:
            while True:
                done, item = await queue.get()
                if not done:
                    yield item
                elif item is None:
                    return
                else:
                    raise item
        finally:
            future.cancel()  # the consumer stopped early: end the request on this loop

    def stop(self) -> None:
        """Stop the loop and wait for its thread (unless called from that thread)."""
        with self._lock:
            self._stopped = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        if threading.current_thread() is thread:
            loop.stop()
            return
        # Cancel what still runs (a request whose caller went away) so the loop closes clean.
        asyncio.run_coroutine_threadsafe(_cancel_others(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


async def _cancel_others() -> None:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


def _run_forever(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:
        loop.close()
