"""The LLM protocol every backend implements: chat messages in, a completion out.

Backends are async (an HTTP client keeps many requests in flight); ``complete_sync``
runs one call from synchronous code such as a stage handler in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from vars_core.types import Message, Usage

if TYPE_CHECKING:
    from vars_core.llm.api import Chunk


class LLMError(RuntimeError):
    """A backend call that failed for good (after its retries), with the reason.

    ``status`` is the HTTP status of the last answer, None when there was none (the
    server was unreachable, timed out, or the failure was not HTTP).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Completion(msgspec.Struct, frozen=True):
    text: str
    usage: Usage = Usage()
    model: str = ""
    finish_reason: str = ""
    # True when the backend reported no usage and ``usage`` is a count_tokens estimate.
    usage_estimated: bool = False


class ChatLLM(Protocol):
    name: str

    async def complete(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        json_schema: dict[str, Any] | None = None,
    ) -> Completion: ...

    def stream(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
    ) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


def complete_sync(llm: ChatLLM, messages: list[Message], **kwargs: Any) -> Completion:
    """Run one completion from synchronous code, in any thread.

    An HTTP client's connections and semaphore belong to one event loop, so a backend
    that holds them (``OpenAIChat``) owns a background loop thread and offers
    ``complete_blocking``, which submits the call to that loop with
    ``asyncio.run_coroutine_threadsafe`` and waits: any number of worker threads then
    share one connection pool and one concurrency limit. A backend without that method
    holds no loop-bound state, and its coroutine runs on a fresh loop here.
    """
    blocking = getattr(llm, "complete_blocking", None)
    if blocking is not None:
        return blocking(messages, **kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(llm.complete(messages, **kwargs))
    raise RuntimeError(
        f"complete_sync({llm.name!r}) called inside a running event loop; await complete()"
    )


def stream_sync(llm: ChatLLM, messages: list[Message], **kwargs: Any) -> Iterator[Chunk]:
    """Stream one completion from synchronous code: a Chunk per text delta, then a last
    Chunk with no text that carries the usage and the finish reason. A backend without
    ``stream_chunks`` (the scripted one) answers whole, as one delta."""
    from vars_core.llm.api import Chunk

    chunks = getattr(llm, "stream_chunks", None)
    if chunks is not None:
        yield from chunks(messages, **kwargs)
        return
    completion = complete_sync(llm, messages, **kwargs)
    if completion.text:
        yield Chunk(completion.text)
    yield Chunk("", completion.usage, completion.finish_reason or "stop", completion.usage_estimated)
