"""POST /v1/chat/completions: a personalized, optionally streamed, chat completion.

The end user is the body's ``user`` (a key bound to one user may leave it out); the method
is the model name (``vars-rag_vector``; plain ``vars`` is the configured default); the last
message is the new turn, and the earlier ones are the conversation as the client sees it,
used as history when the server has none for the session (stateless clients).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.errors import bad_request, from_validation, not_found, timed_out, upstream_failed
from gateway.metrics import DISCONNECTS, STREAMS, TTFT
from gateway.protocol import ChatMessage, ChatRequest, Delta
from gateway.sessions import check_session_name
from gateway.state import Gateway
from gateway.streaming import DONE, RelayTimeout, Reply, entries, sse
from gateway.turns import TurnRef, remember, start_turn
from vars_core.methods import METHODS
from vars_core.reply_stream import Delta as TextDelta
from vars_core.reply_stream import Done, Entry, Failed, stream_key
from vars_core.types import LiveOptions, Message, Role

MODEL_PREFIX = "vars"
_decoder = msgspec.json.Decoder(ChatRequest)


def model_names() -> list[str]:
    return [MODEL_PREFIX, *(f"{MODEL_PREFIX}-{m}" for m in METHODS)]


def method_for(model: str, default: str) -> str:
    if model == MODEL_PREFIX:
        return default
    name = model.removeprefix(MODEL_PREFIX + "-")
    if model.startswith(MODEL_PREFIX + "-") and name in METHODS:
        return name
    raise not_found(
        f"unknown model {model!r}; models: {', '.join(model_names())}", "model", "model_not_found"
    )


def split_messages(messages: list[ChatMessage]) -> tuple[str, list[Message]]:
    """The new turn (the last message, from the user) and the earlier conversation."""
    last = len(messages) - 1
    if messages[last].role != "user":
        raise bad_request(f"the last message must be the user's, not {messages[last].role!r}", f"messages[{last}].role")
    text = messages[last].text().strip()
    if not text:
        raise bad_request("the last message has no text", f"messages[{last}].content")
    history = []
    for m in messages[:last]:
        if m.role == "tool":
            continue  # tool calls are not part of what VARS personalizes
        role: Role = "system" if m.role in ("system", "developer") else "user" if m.role == "user" else "assistant"
        history.append(Message(role, m.text()))
    return text, history


def session_name(request: Request) -> str | None:
    name = request.headers.get("x-session-id")
    if name is None:
        return None
    try:
        return check_session_name(name)
    except ValueError as exc:
        raise bad_request(str(exc), "X-Session-Id") from None


async def create_chat_completion(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    arrived = time.perf_counter()
    key = await gw.authenticate(request)
    body = await gw.read_body(request, key)
    try:
        req = _decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise from_validation(exc) from None
    method = method_for(req.model, gw.engine.config.method)
    user_id = gw.user_for(key, req.user)
    text, history = split_messages(req.messages)
    options = LiveOptions(req.max_completion_tokens or req.max_tokens, req.temperature, req.stream)
    session, turn = await start_turn(gw, user_id, session_name(request), method, text, history, options)

    completion_id = "chatcmpl-" + secrets.token_hex(12)
    await remember(gw, completion_id, TurnRef(user_id, session.session_id, turn, key.key_id))
    reply = Reply(completion_id, req.model, session.session_id, turn)
    stream = entries(gw.aredis, stream_key(gw.store, session.session_id, turn), gw.settings.chunk_timeout_s)
    # The first entry decides the status: a 504 or 502 is still possible until it comes.
    try:
        first = await anext(stream)
    except RelayTimeout:
        raise timed_out(gw.settings.chunk_timeout_s) from None
    if isinstance(first, Failed):
        raise upstream_failed(first.message)
    headers = {"x-vars-session-id": session.session_id, "x-vars-turn": str(turn)}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = relay(gw, reply, first, stream, include_usage, method, arrived)
        return StreamingResponse(events, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
    parts: list[str] = []
    entry: Entry = first
    while not isinstance(entry, Done):
        if isinstance(entry, Failed):
            raise upstream_failed(entry.message)
        parts.append(entry.text)
        try:
            entry = await anext(stream)
        except RelayTimeout:
            raise timed_out(gw.settings.chunk_timeout_s) from None
    body = msgspec.json.encode(reply.completion("".join(parts), entry))
    return Response(body, media_type="application/json", headers=headers)


async def relay(
    gw: Gateway,
    reply: Reply,
    first: Entry,
    stream: AsyncGenerator[Entry, None],
    include_usage: bool,
    method: str,
    arrived: float,
) -> AsyncIterator[bytes]:
    """SSE events from the turn's entries. If the client goes away this generator is
    closed; the turn itself goes on in the workers and is committed there."""
    STREAMS.inc()
    try:
        yield reply.chunk(Delta(role="assistant", content=""))
        entry, timed = first, False
        while True:
            if isinstance(entry, TextDelta):
                if not timed:
                    TTFT.labels(method).observe(time.perf_counter() - arrived)
                    timed = True
                yield reply.chunk(Delta(content=entry.text))
            elif isinstance(entry, Done):
                yield reply.chunk(Delta(), entry.finish_reason, vars=reply.info(entry))
                if include_usage:
                    yield reply.usage_chunk(entry)
                yield DONE
                return
            else:  # Failed mid-stream: the status is sent, so the error goes as an event
                yield sse(upstream_failed(entry.message).envelope())
                return
            try:
                entry = await anext(stream)
            except RelayTimeout:
                yield sse(timed_out(gw.settings.chunk_timeout_s).envelope())
                return
    except (GeneratorExit, asyncio.CancelledError):  # the client disconnected
        DISCONNECTS.inc()
        raise
    finally:
        STREAMS.dec()
        await stream.aclose()
