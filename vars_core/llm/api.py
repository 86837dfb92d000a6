"""The transport every HTTP chat backend shares: pooling, a concurrency limit, retries.

``ChatAPI`` owns one pooled ``httpx.AsyncClient`` on an event loop of its own (see
``loop.py``), an ``asyncio.Semaphore`` that bounds requests in flight, and retries with
exponential backoff and full jitter. A subclass overrides only how a request body is
built and how a reply or a stream chunk is parsed.

Retried: 429 and 5xx answers (Retry-After honoured, up to ``backoff_cap_s``), connect
errors, timeouts and dropped connections, and once a 200 whose body is junk. Not
retried: any other 4xx. A call that fails for good raises ``LLMError``.
"""

from __future__ import annotations

import asyncio
import queue
import random
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import parsedate_to_datetime
from time import time
from typing import Any, NamedTuple, TypeVar

import httpx
import msgspec

from vars_core.llm.base import Completion, LLMError
from vars_core.llm.loop import LoopThread
from vars_core.tokens import count_tokens
from vars_core.types import Message, Usage

T = TypeVar("T")

# Failures of the transport that a later attempt may not meet.
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
JUNK_RETRIES = 1  # a 200 with an unusable body is usually a proxy hiccup, rarely twice

# Called as observer(client name, usage) after every call that completed, on the client's
# loop thread; workers count LLM tokens by role with it. Quick, and must not raise.
usage_observers: list[Callable[[str, Usage], None]] = []


class BadReply(ValueError):
    """A reply body that is not what the API promises (not JSON, no choices, ...)."""


class SchemaRejected(LLMError):
    """The server refused the request's response_format (it cannot do structured output)."""


class Reply(NamedTuple):
    text: str
    usage: Usage | None  # None: the server did not report it
    model: str = ""
    finish_reason: str = ""


class Chunk(NamedTuple):
    delta: str
    usage: Usage | None = None
    finish_reason: str = ""
    # Only on the last chunk of ``stream_chunks``: True when ``usage`` is an estimate.
    usage_estimated: bool = False


class ChatAPI:
    path = "/v1/chat/completions"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        max_concurrency: int = 256,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 20.0,
        name: str = "",
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        # Accept the OpenAI-SDK spelling ".../v1" as well as the bare server address.
        base = base_url.rstrip("/")
        self.base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self.model = model
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.name = name or f"{type(self).__name__}({model or self.base_url})"
        # Counters, only ever changed on the home loop, so they need no lock.
        self.requests = 0  # HTTP attempts
        self.retries = 0
        self.failures = 0  # calls that raised LLMError
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.estimated_usage = 0  # calls whose usage is a count_tokens estimate
        self.schema_fallbacks = 0
        self.schema_supported = True  # False once the server refused response_format
        self._home = LoopThread(name=f"llm:{self.name}")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        weakref.finalize(self, self._home.stop)  # a client never closed still frees its thread

    # ------------------------------------------------------------------ subclass hooks

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def build_payload(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        json_schema: dict[str, Any] | None,
        stream: bool,
    ) -> dict[str, Any]:
        raise NotImplementedError

    def parse_reply(self, body: Any) -> Reply:
        """The completion in a decoded 200 body; raise BadReply when it holds none."""
        raise NotImplementedError

    def parse_chunk(self, body: Any) -> Chunk:
        """The text delta in one decoded stream event; raise BadReply when malformed."""
        raise NotImplementedError

    def rejects_schema(self, status: int, body: str) -> bool:
        """Whether an error answer to a request with a schema refuses the schema itself."""
        return status in (400, 422) or "response_format" in body

    # ------------------------------------------------------------------ public API

    async def complete(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        json_schema: dict[str, Any] | None = None,
    ) -> Completion:
        self._check_open()
        return await self._home.call(
            self._complete(list(messages), max_tokens, temperature, json_schema)
        )

    def complete_blocking(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        json_schema: dict[str, Any] | None = None,
    ) -> Completion:
        """``complete`` for synchronous code in any thread (see ``complete_sync``)."""
        self._check_open()
        return self._home.run(self._complete(list(messages), max_tokens, temperature, json_schema))

    def stream(
        self, messages: list[Message], *, max_tokens: int = 512, temperature: float = 0.0
    ) -> AsyncIterator[str]:
        """Text deltas as the server sends them. A failure before the first delta is
        retried like ``complete``; once text has been yielded it is an LLMError."""
        self._check_open()
        chunks = self._stream(list(messages), self._stream_payload(messages, max_tokens, temperature))
        return self._home.iterate(_texts(chunks))

    def stream_chunks(
        self, messages: list[Message], *, max_tokens: int = 512, temperature: float = 0.0
    ) -> Iterator[Chunk]:
        """``stream`` for synchronous code in any thread: one Chunk per text delta, then a
        last one with no text that carries the usage (the server's, else an estimate
        flagged ``usage_estimated``) and the finish reason. Stopping early ends the request."""
        self._check_open()
        payload = self._stream_payload(messages, max_tokens, temperature)
        items: queue.Queue[Chunk | BaseException | None] = queue.Queue()

        async def pump() -> None:
            try:
                async for chunk in self._stream(list(messages), payload):
                    items.put(chunk)
            except BaseException as exc:  # re-raised in the consuming thread
                items.put(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                items.put(None)

        future = self._home.submit(pump())
        try:
            while (item := items.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()

    def _stream_payload(self, messages: list[Message], max_tokens: int, temperature: float) -> dict[str, Any]:
        return self.build_payload(
            list(messages),
            max_tokens=max_tokens,
            temperature=temperature,
            json_schema=None,
            stream=True,
        )

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "failures": self.failures,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "estimated_usage": self.estimated_usage,
            "schema_fallbacks": self.schema_fallbacks,
        }

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._home.started:
            await self._home.call(self._close_client())
            await asyncio.to_thread(self._home.stop)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._home.started:
            self._home.run(self._close_client())
            self._home.stop()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ on the home loop

    async def _complete(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float,
        json_schema: dict[str, Any] | None,
    ) -> Completion:
        def payload(schema: dict[str, Any] | None) -> dict[str, Any]:
            return self.build_payload(
                messages,
                max_tokens=max_tokens,
                temperature=temperature,
                json_schema=schema,
                stream=False,
            )

        try:
            if json_schema is not None and self.schema_supported:
                try:
                    reply = await self._request(payload(json_schema), schema_sent=True)
                except SchemaRejected:
                    # Plain text once; the caller validates the JSON it asked for anyway.
                    self.schema_fallbacks += 1
                    reply = await self._request(payload(None))
                    self.schema_supported = False  # the plain call worked: remember it
            else:
                reply = await self._request(payload(None))
        except LLMError:
            self.failures += 1
            raise
        usage, estimated = self._account(messages, reply.text, reply.usage)
        return Completion(
            text=reply.text,
            usage=usage,
            model=reply.model or self.model,
            finish_reason=reply.finish_reason,
            usage_estimated=estimated,
        )

    async def _request(self, payload: dict[str, Any], *, schema_sent: bool = False) -> Reply:
        client = self._http()
        url = self.base_url + self.path
        attempt = junk = 0
        while True:
            retry_after: float | None = None
            try:
                async with self._slots:
                    self.requests += 1
                    resp = await client.post(self.path, json=payload)
            except TRANSIENT_ERRORS as exc:
                error = LLMError(f"{self.name}: {_describe(exc, url, self.timeout_s)}")
            else:
                if resp.status_code == 200:
                    try:
                        return self.parse_reply(_decode(resp.content))
                    except BadReply as exc:
                        error = LLMError(f"{self.name}: bad reply from {url}: {self._redact(str(exc))}", status=200)
                        junk += 1
                        if junk > JUNK_RETRIES:
                            raise error from None
                else:
                    error = self._status_error(resp, url)
                    if schema_sent and self.rejects_schema(resp.status_code, resp.text):
                        raise SchemaRejected(str(error), status=resp.status_code)
                    if not _retryable(resp.status_code):
                        raise error
                    retry_after = _retry_after(resp.headers.get("retry-after"))
            if attempt >= self.max_retries:
                raise LLMError(
                    f"{error} (gave up after {attempt + 1} attempts)", status=error.status
                )
            attempt += 1
            self.retries += 1
            await asyncio.sleep(self._delay(attempt, retry_after))

    async def _stream(self, messages: list[Message], payload: dict[str, Any]) -> AsyncIterator[Chunk]:
        client = self._http()
        url = self.base_url + self.path
        attempt = 0
        parts: list[str] = []
        usage: Usage | None = None
        finish_reason = ""
        try:
            while True:
                retry_after: float | None = None
                try:
                    async with self._slots:
                        self.requests += 1
                        async with client.stream("POST", self.path, json=payload) as resp:
                            if resp.status_code == 200:
                                async for data in _sse_data(resp):
                                    try:
                                        chunk = self.parse_chunk(_decode(data.encode()))
                                    except BadReply as exc:
                                        raise LLMError(
                                            f"{self.name}: bad stream event from {url}: {self._redact(str(exc))}",
                                            status=200,
                                        ) from None
                                    usage = chunk.usage or usage
                                    finish_reason = chunk.finish_reason or finish_reason
                                    if chunk.delta:
                                        parts.append(chunk.delta)
                                        yield Chunk(chunk.delta)
                                break
                            await resp.aread()
                            error = self._status_error(resp, url)
                            if not _retryable(resp.status_code):
                                raise error
                            retry_after = _retry_after(resp.headers.get("retry-after"))
                except TRANSIENT_ERRORS as exc:
                    error = LLMError(f"{self.name}: {_describe(exc, url, self.timeout_s)}")
                    if parts:  # text already went out: a replay would repeat it
                        raise LLMError(
                            f"{error} (stream broken after {len(parts)} deltas)"
                        ) from None
                if attempt >= self.max_retries:
                    raise LLMError(
                        f"{error} (gave up after {attempt + 1} attempts)", status=error.status
                    )
                attempt += 1
                self.retries += 1
                await asyncio.sleep(self._delay(attempt, retry_after))
        except LLMError:
            self.failures += 1
            raise
        usage, estimated = self._account(messages, "".join(parts), usage)
        yield Chunk("", usage, finish_reason or "stop", estimated)

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise LLMError(f"{self.name}: client is closed")

    def _http(self) -> httpx.AsyncClient:
        # Made on the home loop, which its connections then belong to. Pool limits match
        # the semaphore, so a request that holds a slot never waits for a connection.
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=self.headers(),
                timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
                limits=httpx.Limits(
                    max_connections=self.max_concurrency,
                    max_keepalive_connections=self.max_concurrency,
                ),
            )
        return self._client

    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_cap_s)
        # Full jitter: spreads the retries of many clients that failed at the same moment.
        return random.uniform(
            0.0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1))
        )

    def _status_error(self, resp: httpx.Response, url: str) -> LLMError:
        return LLMError(
            f"{self.name}: HTTP {resp.status_code} from {url}: {_excerpt(self._redact(resp.text))}",
            status=resp.status_code,
        )

    def _redact(self, text: str) -> str:
        """Server text with this client's API key blanked out: an error body that echoes
        the request's Authorization header must not carry the key into an LLMError, and
        from there into logs, dead letters, failure reasons and HTTP errors."""
        return text.replace(self.api_key, "[api key]") if self.api_key else text

    def _account(
        self, messages: list[Message], text: str, usage: Usage | None
    ) -> tuple[Usage, bool]:
        estimated = usage is None
        if usage is None:
            # The server reported none: the same word-and-punctuation estimate the scripted
            # world uses, flagged on the Completion as usage_estimated.
            usage = Usage(
                prompt_tokens=sum(count_tokens(m.content) for m in messages),
                completion_tokens=count_tokens(text),
            )
            self.estimated_usage += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        for observe in usage_observers:
            observe(self.name, usage)
        return usage, estimated


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _decode(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise BadReply(f"not JSON: {_excerpt(raw.decode('utf-8', 'replace'))!r}") from None


def _excerpt(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _describe(exc: Exception, url: str, timeout_s: float) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"cannot connect to {url}: timed out"
    if isinstance(exc, httpx.TimeoutException):
        return f"no reply from {url} within {timeout_s:g}s"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {url}: {exc or type(exc).__name__}"
    return f"connection to {url} failed: {type(exc).__name__}: {exc}"


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None


async def _texts(chunks: AsyncIterator[Chunk]) -> AsyncIterator[str]:
    async for chunk in chunks:
        if chunk.delta:
            yield chunk.delta


async def _sse_data(resp: httpx.Response) -> AsyncIterator[str]:
    """The data of each server-sent event until [DONE] (servers send one line each)."""
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments (": ping"), event/id fields
        data = line[5:].strip()
        if data == "[DONE]":
            return
        if data:
            yield data


__all__ = ["BadReply", "ChatAPI", "Chunk", "Reply", "SchemaRejected", "TRANSIENT_ERRORS"]
