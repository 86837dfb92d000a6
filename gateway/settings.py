"""The gateway's own settings (the engine's come from VARS_CONFIG as for the workers)."""

from __future__ import annotations

import msgspec


class GatewaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # A user's default session ends after this long without a turn (named sessions, by
    # X-Session-Id, last until they are reset). 0: never.
    idle_timeout_s: float = 1800.0
    # No chunk from the pipeline within this long: 504 (or an error event mid-stream).
    chunk_timeout_s: float = 120.0
    # How long a request waits for the previous turn of its session to be answered
    # before it answers that turn empty and goes on.
    turn_wait_s: float = 120.0
    # Per-key limits, unless the key sets its own.
    rate_per_s: float = 10.0
    burst: int = 20
    max_body_bytes: int = 1 << 20
    # How long a completion id can be given feedback.
    completion_ttl_s: int = 7 * 24 * 3600
    # A key lookup is cached this long (so a revoked key stops within it).
    key_cache_s: float = 1.0
    namespace: str = "vars"
