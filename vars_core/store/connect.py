"""Opening a Redis client for the state store: one place for timeouts and retries."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

_SCHEMES = ("redis", "rediss", "unix")


def redis_url_from_env() -> str | None:
    """The ``REDIS_URL`` environment variable, or None when it is unset or blank."""
    url = os.environ.get("REDIS_URL", "").strip()
    return url or None


def connect(
    url: str,
    *,
    socket_timeout: float = 30.0,
    connect_timeout: float = 5.0,
    retries: int = 5,
    health_check_interval: int = 15,
) -> redis.Redis:
    """A client for ``url`` (redis://, rediss:// or unix://) returning bytes.

    Connection errors and timeouts are retried with capped, jittered exponential backoff,
    which survives a Redis restart of a few seconds. Retrying a command whose reply was
    lost can run it twice: the store's writes are safe under that because a stage commit
    is idempotent on its marker and a WATCHed transaction that loses its connection is
    re-run from its reads. ``health_check_interval`` pings a connection idle that long
    before reusing it, so a dead socket is found before a command is sent on it.
    """
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise ValueError(
            f"bad Redis URL {url!r}: the scheme must be one of "
            + ", ".join(f"{s}://" for s in _SCHEMES)
        )
    retry = Retry(
        ExponentialWithJitterBackoff(base=0.05, cap=2.0),
        retries,
        supported_errors=(RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError),
    )
    options: dict[str, object] = {
        "decode_responses": False,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": health_check_interval,
        "retry": retry,
    }
    if scheme != "unix":
        options["socket_keepalive"] = True  # TCP only: unix sockets reject the option
    return redis.Redis.from_url(url, **options)
