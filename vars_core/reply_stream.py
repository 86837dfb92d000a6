"""A live turn's reply as it is generated: text deltas, then one closing entry.

The generate stage writes the entries into a sink; the gateway reads them back and relays
them to the client. The Redis sink appends to a stream under the session's keys (XADD with
a length cap and an expiry), so a reader that starts late still sees every entry from the
first, and nothing stays behind once the turn is old. The sink is chosen by the engine
(``Engine.reply_sink``), so a caller can plug in another transport.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from vars_core.store import StateStore
from vars_core.types import Usage

STREAM_FIELD = b"e"
MAX_ENTRIES = 20_000  # a reply longer than this many deltas keeps only its tail
TTL_S = 3600  # a turn's stream outlives any reader that still cares


class Memory(msgspec.Struct, frozen=True):
    """One memory that went into the prompt (card_id is empty for reflection notes)."""

    note: str
    card_id: str = ""


class Delta(msgspec.Struct, frozen=True, tag="delta"):
    text: str


class Done(msgspec.Struct, frozen=True, tag="done"):
    finish_reason: str
    usage: Usage
    memories: list[Memory] = []
    usage_estimated: bool = False


class Failed(msgspec.Struct, frozen=True, tag="error"):
    message: str


Entry = Delta | Done | Failed

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Entry)


def encode_entry(entry: Entry) -> bytes:
    return _encoder.encode(entry)


def decode_entry(data: bytes) -> Entry:
    return _decoder.decode(data)


class ReplySink(Protocol):
    def delta(self, text: str) -> None: ...

    def close(self, entry: Done | Failed) -> None: ...


def stream_key(store: StateStore, session_id: str, turn: int) -> str:
    return store.keys.session(session_id, f"reply:{turn}")


class RedisReplySink:
    """XADD per entry on a redis-py client; the key expires TTL_S after the last entry."""

    def __init__(self, client: Any, key: str, max_entries: int = MAX_ENTRIES, ttl_s: int = TTL_S) -> None:
        self.client = client
        self.key = key
        self.max_entries = max_entries
        self.ttl_s = ttl_s

    def _add(self, entry: Entry) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.key, {STREAM_FIELD: encode_entry(entry)}, maxlen=self.max_entries, approximate=True)
        pipe.expire(self.key, self.ttl_s)
        pipe.execute()

    def delta(self, text: str) -> None:
        self._add(Delta(text))

    def close(self, entry: Done | Failed) -> None:
        self._add(entry)


class MemoryReplySink:
    """Keeps the entries in a list (the in-memory store, and tests)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def delta(self, text: str) -> None:
        self.entries.append(Delta(text))

    def close(self, entry: Done | Failed) -> None:
        self.entries.append(entry)

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.entries if isinstance(e, Delta))


def redis_reply_sink(store: StateStore, session_id: str, turn: int) -> ReplySink | None:
    """The default: a Redis stream when the store is on Redis, else no streaming."""
    client = getattr(store.backend, "client", None)
    if client is None:
        return None
    return RedisReplySink(client, stream_key(store, session_id, turn))
