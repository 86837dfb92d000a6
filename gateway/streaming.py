"""Relay: read a turn's reply stream from Redis (XREAD, blocking) as the generate worker
appends to it, and turn its entries into OpenAI chunks or one completion.

A Redis stream rather than pub/sub: entries written before the gateway starts reading
are not lost, and a reader that reconnects continues from the last id it saw.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any, Final

import msgspec

from gateway.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    CompletionUsage,
    Delta,
    MemoryUsed,
    ResponseMessage,
    VarsInfo,
)
from vars_core.reply_stream import STREAM_FIELD, Done, Entry, Failed, decode_entry
from vars_core.reply_stream import Delta as TextDelta

CHUNK: Final = "chat.completion.chunk"


class RelayTimeout(Exception):
    """No entry within the chunk timeout."""


async def entries(client: Any, key: str, timeout_s: float) -> AsyncGenerator[Entry, None]:
    """The stream's entries from the first, until Done or Failed."""
    last = "0-0"
    while True:
        found = await client.xread({key: last}, count=256, block=max(1, int(timeout_s * 1000)))
        if not found:
            raise RelayTimeout(key)
        for _key, items in found:
            for entry_id, fields in items:
                last = entry_id
                entry = decode_entry(fields[STREAM_FIELD])
                yield entry
                if isinstance(entry, (Done, Failed)):
                    return


class Reply:
    """One completion's identity and formatting."""

    def __init__(self, completion_id: str, model: str, session_id: str, turn: int) -> None:
        self.id = completion_id
        self.model = model
        self.session_id = session_id
        self.turn = turn
        self.created = int(time.time())

    def info(self, done: Done) -> VarsInfo:
        memories = [MemoryUsed(m.card_id, m.note) for m in done.memories]
        return VarsInfo(self.session_id, self.turn, memories, done.usage_estimated)

    @staticmethod
    def usage(done: Done) -> CompletionUsage:
        u = done.usage
        return CompletionUsage(u.prompt_tokens, u.completion_tokens, u.prompt_tokens + u.completion_tokens)

    def chunk(self, delta: Delta, finish_reason: str | None = None, **extra: Any) -> bytes:
        body = ChatCompletionChunk(self.id, CHUNK, self.created, self.model, [ChunkChoice(0, delta, finish_reason)], **extra)
        return sse(body)

    def usage_chunk(self, done: Done) -> bytes:
        return sse(ChatCompletionChunk(self.id, CHUNK, self.created, self.model, [], usage=self.usage(done)))

    def completion(self, text: str, done: Done) -> ChatCompletion:
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[Choice(0, ResponseMessage(text), done.finish_reason)],
            usage=self.usage(done),
            vars=self.info(done),
        )


def sse(body: object) -> bytes:
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def text_of(entry: Entry) -> str:
    return entry.text if isinstance(entry, TextDelta) else ""
