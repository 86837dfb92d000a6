"""What every route shares: the store, an async Redis client, the Celery app that publishes
turn events, the engine (its config: method default, vector size, reward settings), keys
and the rate limiter. One per gateway process."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from starlette.requests import Request

from gateway.auth import ApiKey, KeyCache, KeyStore, bearer_token
from gateway.errors import bad_request, forbidden, rate_limited, too_large, unauthorized
from gateway.ratelimit import RedisRateLimiter
from gateway.settings import GatewaySettings
from vars_core.config import config_from_env
from vars_core.engine import Engine
from vars_core.store import StateStore
from vars_core.store.connect import connect
from vars_core.store.redis_backend import RedisBackend


class Gateway:
    def __init__(self, redis_url: str, settings: GatewaySettings | None = None, engine: Engine | None = None) -> None:
        from workers.app import make_app  # the Celery app only, to publish turn events

        self.settings = settings or GatewaySettings()
        self.redis_url = redis_url
        self.store = StateStore(RedisBackend(connect(redis_url)), namespace=self.settings.namespace)
        # Blocking stream reads wait up to chunk_timeout_s; the socket must wait longer.
        self.aredis = aioredis.Redis.from_url(
            redis_url, socket_timeout=self.settings.chunk_timeout_s + 30, socket_connect_timeout=5
        )
        self.celery = make_app(redis_url)
        self.engine = engine or Engine(config_from_env())
        self.keys = KeyStore(self.store.backend, self.settings.namespace)
        self.key_cache = KeyCache(self.keys, self.settings.key_cache_s)
        self.limiter: Any = RedisRateLimiter(self.aredis, self.settings.namespace)

    async def close(self) -> None:
        await self.aredis.aclose()

    # per request ------------------------------------------------------------------
    async def authenticate(self, request: Request) -> ApiKey:
        """The request's key (401 without a live one), after its rate limit (429)."""
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        key = await asyncio.to_thread(self.key_cache.lookup, token)
        if key is None:
            raise unauthorized("invalid or revoked API key")
        rate = key.rate_per_s or self.settings.rate_per_s
        burst = key.burst or self.settings.burst
        decision = await self.limiter.check(key.key_id, rate, burst)
        if not decision.allowed:
            raise rate_limited(decision.retry_after_s)
        return key

    def max_body(self, key: ApiKey) -> int:
        return key.max_body_bytes or self.settings.max_body_bytes

    async def read_body(self, request: Request, key: ApiKey) -> bytes:
        """The body, refused (413) as soon as it passes the key's size limit."""
        limit = self.max_body(key)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        parts, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise too_large(limit)
            parts.append(part)
        return b"".join(parts)

    def user_for(self, key: ApiKey, user: str | None, param: str = "user") -> str:
        """The store's user id for an end user named in a request (403 if the key may not
        act for them). A key bound to one user may leave the field out."""
        if user is None:
            if len(key.users) == 1:
                return key.store_user_id(key.users[0])
            raise bad_request("`user` is required: this API key acts for several users", param)
        if not key.may_act_for(user):
            raise forbidden(f"this API key may not act for user {user!r}", param)
        return key.store_user_id(user)
