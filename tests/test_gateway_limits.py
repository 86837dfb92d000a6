"""The gateway's refusals on a real Redis with no workers behind it: 401 for missing and
revoked keys, 413 over a key's body limit, 429 over its rate (one bucket shared by two
gateway processes), and 504 when no chunk comes in time."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from gateway.app import build_app
from gateway.auth import KeyStore
from gateway.settings import GatewaySettings
from queues.topology import all_queues
from scheduler.embedded_redis import EmbeddedRedis
from vars_core.store.connect import connect
from vars_core.store.redis_backend import RedisBackend

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = EmbeddedRedis(home=tmp_path_factory.mktemp("limits-home"))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="module")
def keys(redis_url) -> KeyStore:
    return KeyStore(RedisBackend(connect(redis_url)))


def _client(redis_url: str, **settings) -> TestClient:
    app = build_app(redis_url, GatewaySettings(key_cache_s=0.0, **settings))
    return TestClient(app, raise_server_exceptions=False)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_missing_and_revoked_keys_get_401(redis_url, keys):
    key, record = keys.create(["alice"])
    with _client(redis_url) as http:
        missing = http.get("/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/v1/models", headers=_auth(key)).status_code == 200
        keys.revoke(record.key_id)
        revoked = http.get("/v1/models", headers=_auth(key))
        assert revoked.status_code == 401 and revoked.json()["error"]["type"] == "authentication_error"


def test_a_body_over_the_keys_limit_gets_413(redis_url, keys):
    key, _ = keys.create(["alice"], max_body_bytes=2048)
    body = {"model": "vars", "user": "alice", "messages": [{"role": "user", "content": "x" * 4000}]}
    with _client(redis_url) as http:
        resp = http.post("/v1/chat/completions", json=body, headers=_auth(key))
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
        # Without a Content-Length the body is counted as it streams in.
        chunks = (b"x" * 1024 for _ in range(4))
        streamed = http.post("/v1/chat/completions", content=chunks, headers=_auth(key))
        assert streamed.status_code == 413


def test_the_rate_limit_is_per_key_and_shared_by_gateway_processes(redis_url, keys):
    slow, _ = keys.create(["alice"], rate_per_s=0.5, burst=3)
    other, _ = keys.create(["bob"], rate_per_s=0.5, burst=3)
    with _client(redis_url) as one, _client(redis_url) as two:
        codes = [client.get("/v1/models", headers=_auth(slow)).status_code for client in (one, two, one, two)]
        assert codes == [200, 200, 200, 429]
        refused = two.get("/v1/models", headers=_auth(slow))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert one.get("/v1/models", headers=_auth(other)).status_code == 200  # its own bucket


def test_no_chunk_in_time_gets_504(redis_url, keys):
    key, _ = keys.create(["alice"])
    body = {"model": "vars-vanilla", "user": "alice", "messages": [{"role": "user", "content": "hello?"}]}
    try:
        with _client(redis_url, chunk_timeout_s=0.5, turn_wait_s=0.5) as http:
            started = time.monotonic()
            resp = http.post("/v1/chat/completions", json=body, headers=_auth(key))
            assert resp.status_code == 504 and time.monotonic() - started < 10
            assert resp.json()["error"] == {
                "message": "no reply from the pipeline within 0.5 s", "type": "timeout_error", "param": None, "code": "timeout",
            }
            # The unanswered turn does not block the session: the next request waits
            # turn_wait_s for it, answers it empty, and goes on (to its own 504 here).
            assert http.post("/v1/chat/completions", json=body, headers=_auth(key)).status_code == 504
        store = RedisBackend(connect(redis_url))
        assert store.client.llen("vars.generate.live") == 2  # both turns were published
    finally:
        connect(redis_url).delete(*(q.name for q in all_queues()))
