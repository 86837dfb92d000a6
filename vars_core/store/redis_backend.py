"""The Redis backend: the same contract as ``MemoryBackend``, on a real server.

``apply`` is one Lua script (the marker check and every write in one atomic step);
``transact`` is WATCH/MULTI/EXEC, re-running ``build`` whenever a watched key changed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from redis.client import Pipeline

from vars_core.store.backend import Op

T = TypeVar("T")

# KEYS: the key of every op, then the marker (when ARGV[1] == "1").
# ARGV: has_marker, then (kind, field, value) per op.
# A script that fails half-way is not rolled back, so a first pass checks every op
# against the key types it will meet (tracking the types earlier ops give) and the
# writes start only when all of them can succeed.
_APPLY_LUA = r"""
local has_marker = ARGV[1] == '1'
local n = #KEYS
if has_marker then
  n = n - 1
  if redis.call('EXISTS', KEYS[#KEYS]) == 1 then return 0 end
end
local want = {set = 'string', rpush = 'list', hset = 'hash', hdel = 'hash',
              incr = 'string', del = 'none'}
local function is_int(s) return string.match(s, '^%-?%d+$') ~= nil end
local types, vals = {}, {}
for i = 1, n do
  local key, kind, value = KEYS[i], ARGV[3 * i - 1], ARGV[3 * i + 1]
  local w = want[kind]
  if w == nil then return redis.error_reply('apply: unknown op kind ' .. kind) end
  local t, cur = types[key], vals[key]
  if t == nil then
    t = redis.call('TYPE', key)['ok']
    if kind == 'incr' and t == 'string' then cur = redis.call('GET', key) end
  end
  if kind == 'set' then
    types[key], vals[key] = 'string', value
  elseif kind == 'del' then
    types[key], vals[key] = 'none', nil
  else
    if t ~= 'none' and t ~= w then
      return redis.error_reply('apply: ' .. kind .. ' on a ' .. t .. ' at ' .. key)
    end
    if kind == 'incr' then
      if value ~= '' and not is_int(value) then
        return redis.error_reply('apply: incr by a non-integer at ' .. key)
      end
      if cur and not is_int(cur) then
        return redis.error_reply('apply: incr of a non-integer value at ' .. key)
      end
      vals[key] = '0'
    end
    if kind ~= 'hdel' or t ~= 'none' then types[key] = w else types[key] = t end
  end
end
for i = 1, n do
  local key, kind, field, value = KEYS[i], ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if kind == 'set' then redis.call('SET', key, value)
  elseif kind == 'rpush' then redis.call('RPUSH', key, value)
  elseif kind == 'hset' then redis.call('HSET', key, field, value)
  elseif kind == 'hdel' then redis.call('HDEL', key, field)
  elseif kind == 'del' then redis.call('DEL', key)
  elseif kind == 'incr' then
    if value == '' then value = '1' end
    redis.call('INCRBY', key, value)
  end
end
if has_marker then redis.call('SET', KEYS[#KEYS], '1') end
return 1
"""

_GLOB_SPECIALS = frozenset("\\*?[]")
_MAX_TRANSACT_ATTEMPTS = 10_000


def glob_escape(text: str) -> str:
    """Escape Redis MATCH specials so a key prefix matches only itself ('{' is literal)."""
    return "".join("\\" + ch if ch in _GLOB_SPECIALS else ch for ch in text)


BULK_CHUNK = 1000  # keys per MGET / pipeline in bulk reads


class RedisBackend:
    """KVBackend over a redis-py client created with ``decode_responses=False``."""

    def __init__(self, client: redis.Redis) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisBackend needs a client with decode_responses=False")
        self.client = client
        self._apply = client.register_script(_APPLY_LUA)
        self._local = threading.local()

    # Inside ``transact`` a thread's reads go through its watching pipeline, which runs
    # commands immediately on the connection that holds the WATCH.
    def _reader(self) -> Any:
        stack: list[Pipeline] = getattr(self._local, "pipes", [])
        return stack[-1] if stack else self.client

    @contextmanager
    def _reading_through(self, pipe: Pipeline) -> Iterator[None]:
        stack = self._local.__dict__.setdefault("pipes", [])
        stack.append(pipe)
        try:
            yield
        finally:
            stack.pop()

    # reads ------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        try:
            return self._reader().get(key)
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise TypeError(f"key {key!r} does not hold a string") from exc
            raise

    def exists(self, key: str) -> bool:
        return bool(self._reader().exists(key))

    # Bulk reads for status and export over tens of thousands of sessions: one round trip
    # per chunk instead of one per key.
    def mget(self, keys: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for start in range(0, len(keys), BULK_CHUNK):
            out.extend(self.client.mget(keys[start : start + BULK_CHUNK]))
        return out

    def exists_many(self, keys: list[str]) -> list[bool]:
        out: list[bool] = []
        for start in range(0, len(keys), BULK_CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for key in keys[start : start + BULK_CHUNK]:
                pipe.exists(key)
            out.extend(bool(n) for n in pipe.execute())
        return out

    def lrange(self, key: str, start: int = 0, end: int = -1) -> list[bytes]:
        return list(self._reader().lrange(key, start, end))

    def llen(self, key: str) -> int:
        return int(self._reader().llen(key))

    def hget(self, key: str, field: str) -> bytes | None:
        return self._reader().hget(key, field)

    def hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for start in range(0, len(fields), BULK_CHUNK):
            out.extend(self._reader().hmget(key, fields[start : start + BULK_CHUNK]))
        return out

    def hgetall(self, key: str) -> dict[str, bytes]:
        raw = self._reader().hgetall(key)
        return {f.decode(): v for f, v in raw.items()}

    def scan(self, prefix: str) -> list[str]:
        # SCAN may report a key twice while the table rehashes: dedupe.
        found = self._reader().scan_iter(match=glob_escape(prefix) + "*", count=1000)
        return sorted({k.decode() for k in found})

    # writes -----------------------------------------------------------------
    def apply(self, ops: list[Op], marker: str | None = None) -> bool:
        keys = [op.key for op in ops]
        args: list[str | bytes] = ["1" if marker is not None else "0"]
        for op in ops:
            args += [op.kind, op.field, op.value]
        if marker is not None:
            keys.append(marker)
        return bool(self._apply(keys=keys, args=args))

    def transact(self, watch: list[str], build: Callable[[], tuple[list[Op], T]]) -> T:
        """Optimistic read-modify-write. WATCH is in place before ``build`` reads, so any
        write to a watched key after that read (from any client) makes EXEC fail and
        ``build`` runs again on fresh values. Reads go through the watching connection
        itself. EXEC runs even when ``build`` returns no ops, so the result always comes
        from a consistent view of the watched keys. With nothing to watch, the ops are
        simply written in one MULTI/EXEC."""
        for attempt in range(_MAX_TRANSACT_ATTEMPTS):
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    if watch:
                        pipe.watch(*watch)
                        with self._reading_through(pipe):
                            ops, result = build()
                    else:
                        ops, result = build()
                    pipe.multi()
                    for op in ops:
                        _queue(pipe, op)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    # Back off a little after repeated conflicts so racers spread out.
                    if attempt >= 3:
                        time.sleep(random.uniform(0, 0.0005 * min(attempt, 20)))
        raise RuntimeError(
            f"transaction on {watch!r} kept conflicting after {_MAX_TRANSACT_ATTEMPTS} tries"
        )


def _queue(pipe: Pipeline, op: Op) -> None:
    if op.kind == "set":
        pipe.set(op.key, op.value)
    elif op.kind == "rpush":
        pipe.rpush(op.key, op.value)
    elif op.kind == "hset":
        pipe.hset(op.key, op.field, op.value)
    elif op.kind == "hdel":
        pipe.hdel(op.key, op.field)
    elif op.kind == "del":
        pipe.delete(op.key)
    elif op.kind == "incr":
        pipe.incrby(op.key, int(op.value or b"1"))
    else:  # pragma: no cover - Literal keeps this unreachable
        raise ValueError(f"unknown op kind {op.kind!r}")
