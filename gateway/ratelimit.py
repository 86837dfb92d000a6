"""A token bucket per API key: ``burst`` requests at once, refilled at ``rate`` per second.

The Redis limiter keeps each bucket in Redis and updates it in one Lua step with the
server's clock, so every gateway process on the same Redis shares one bucket per key.
The memory limiter runs the same arithmetic (``take``) in-process.
"""

from __future__ import annotations

import threading
import time
from typing import Any, NamedTuple


class Decision(NamedTuple):
    allowed: bool
    retry_after_s: float  # 0 when allowed


def take(tokens: float, last: float, now: float, rate: float, burst: float, cost: float = 1.0) -> tuple[Decision, float]:
    """One request against a bucket that held ``tokens`` at time ``last``: the decision,
    and the tokens left at ``now``."""
    tokens = min(burst, tokens + max(0.0, now - last) * rate)
    if tokens >= cost:
        return Decision(True, 0.0), tokens - cost
    return Decision(False, (cost - tokens) / rate if rate > 0 else float("inf")), tokens


class MemoryRateLimiter:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    async def check(self, key_id: str, rate: float, burst: float) -> Decision:
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key_id, (burst, now))
            decision, left = take(tokens, last, now, rate, burst)
            self._buckets[key_id] = (left, now)
            return decision


# The same arithmetic as ``take``, on the server's clock. KEYS[1]: the bucket hash.
# ARGV: rate, burst. Returns {allowed, retry_after as text}.
_TAKE_LUA = r"""
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, last = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens, allowed = tokens - 1, 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, string.format('%.6f', wait)}
"""


class RedisRateLimiter:
    """On a ``redis.asyncio`` client."""

    def __init__(self, client: Any, namespace: str = "vars") -> None:
        self._script = client.register_script(_TAKE_LUA)
        self.ns = namespace

    async def check(self, key_id: str, rate: float, burst: float) -> Decision:
        allowed, wait = await self._script(keys=[f"{self.ns}:gw:rate:{{{key_id}}}"], args=[rate, burst])
        return Decision(bool(int(allowed)), float(wait))
