"""The raw key-value backends under the state store: in-memory and Redis share this contract.

A backend knows bytes, keys, lists and hashes. Atomicity is offered two ways:

- ``apply(ops, marker)``: write every op and the marker at once, unless the marker already
  exists (then write nothing). This is the idempotent stage commit.
- ``transact(watch, build)``: optimistic read-modify-write. ``build`` reads through the
  backend and returns ``(ops, result)``; the ops are written only if none of the watched
  keys changed meanwhile, otherwise ``build`` runs again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal, Protocol, TypeVar

import msgspec

T = TypeVar("T")


class Op(msgspec.Struct, frozen=True, array_like=True):
    kind: Literal["set", "rpush", "hset", "hdel", "del", "incr"]
    key: str
    field: str = ""
    value: bytes = b""


class KVBackend(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def exists(self, key: str) -> bool: ...
    def mget(self, keys: list[str]) -> list[bytes | None]: ...
    def exists_many(self, keys: list[str]) -> list[bool]: ...
    def lrange(self, key: str, start: int = 0, end: int = -1) -> list[bytes]: ...
    def llen(self, key: str) -> int: ...
    def hget(self, key: str, field: str) -> bytes | None: ...
    def hmget(self, key: str, fields: list[str]) -> list[bytes | None]: ...
    def hgetall(self, key: str) -> dict[str, bytes]: ...
    def apply(self, ops: list[Op], marker: str | None = None) -> bool: ...
    def transact(self, watch: list[str], build: Callable[[], tuple[list[Op], T]]) -> T: ...
    def scan(self, prefix: str) -> list[str]: ...


class MemoryBackend:
    """A thread-safe in-process backend. One lock makes every write group atomic."""

    def __init__(self) -> None:
        self._data: dict[str, object] = {}
        self._writes: dict[str, int] = {}  # per-key write counter, WATCH's equivalent
        self._lock = threading.RLock()

    # reads ------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                return None
            if not isinstance(value, bytes):
                raise TypeError(f"key {key!r} does not hold a string")
            return value

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._data

    def mget(self, keys: list[str]) -> list[bytes | None]:
        return [self.get(key) for key in keys]

    def exists_many(self, keys: list[str]) -> list[bool]:
        with self._lock:
            return [key in self._data for key in keys]

    def lrange(self, key: str, start: int = 0, end: int = -1) -> list[bytes]:
        with self._lock:
            items = self._data.get(key, [])
            assert isinstance(items, list)
            stop = None if end == -1 else end + 1
            return list(items[start:stop])

    def llen(self, key: str) -> int:
        with self._lock:
            items = self._data.get(key, [])
            assert isinstance(items, list)
            return len(items)

    def hget(self, key: str, field: str) -> bytes | None:
        with self._lock:
            table = self._data.get(key, {})
            assert isinstance(table, dict)
            return table.get(field)

    def hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        with self._lock:
            table = self._data.get(key, {})
            assert isinstance(table, dict)
            return [table.get(f) for f in fields]

    def hgetall(self, key: str) -> dict[str, bytes]:
        with self._lock:
            table = self._data.get(key, {})
            assert isinstance(table, dict)
            return dict(table)

    def scan(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(k for k in self._data if k.startswith(prefix))

    # writes -----------------------------------------------------------------
    def apply(self, ops: list[Op], marker: str | None = None) -> bool:
        with self._lock:
            if marker is not None and marker in self._data:
                return False
            self._check(ops)  # all or nothing: refuse the batch before writing any of it
            for op in ops:
                self._apply_one(op)
            if marker is not None:
                self._data[marker] = b"1"
                self._bump(marker)
            return True

    def transact(self, watch: list[str], build: Callable[[], tuple[list[Op], T]]) -> T:
        # The lock is re-entrant and held across build, so nothing can interleave.
        with self._lock:
            ops, result = build()
            self._check(ops)
            for op in ops:
                self._apply_one(op)
            return result

    _KIND_TYPE = {"set": bytes, "incr": bytes, "rpush": list, "hset": dict, "hdel": dict}

    def _check(self, ops: list[Op]) -> None:
        """Raise before any write if an op meets a key of the wrong type (as Redis would)."""
        types: dict[str, type | None] = {}
        for op in ops:
            current = types.get(op.key, type(self._data[op.key]) if op.key in self._data else None)
            if op.kind == "del":
                types[op.key] = None
                continue
            wanted = self._KIND_TYPE[op.kind]
            if current is not None and current is not wanted:
                raise TypeError(f"{op.kind} on key {op.key!r}, which holds a {current.__name__}")
            if op.kind == "incr" and current is bytes and op.key not in types:
                value = self._data[op.key]
                if not isinstance(value, bytes) or not value.lstrip(b"-").isdigit():
                    raise TypeError(f"incr on key {op.key!r}, which is not an integer")
            types[op.key] = wanted if op.kind != "hdel" else current

    def _bump(self, key: str) -> None:
        self._writes[key] = self._writes.get(key, 0) + 1

    def _apply_one(self, op: Op) -> None:
        self._bump(op.key)
        if op.kind == "set":
            self._data[op.key] = op.value
        elif op.kind == "del":
            self._data.pop(op.key, None)
        elif op.kind == "incr":
            current = int(self._data.get(op.key, b"0"))  # type: ignore[arg-type]
            self._data[op.key] = str(current + int(op.value or b"1")).encode()
        elif op.kind == "rpush":
            self._data.setdefault(op.key, []).append(op.value)  # type: ignore[union-attr]
        elif op.kind == "hset":
            self._data.setdefault(op.key, {})[op.field] = op.value  # type: ignore[index]
        elif op.kind == "hdel":
            table = self._data.get(op.key)
            if isinstance(table, dict):
                table.pop(op.field, None)
        else:  # pragma: no cover - Literal keeps this unreachable
            raise ValueError(f"unknown op kind {op.kind!r}")
