"""The gateway's parts without Redis or a server: errors, keys, rate limits, sessions, and
the live generate stage streaming into an injected sink."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from gateway.auth import KeyCache, KeyRefused, KeyStore, bearer_token
from gateway.errors import APIError, from_validation, rate_limited
from gateway.protocol import ChatMessage, ChatRequest
from gateway.ratelimit import MemoryRateLimiter, take
from gateway.routes.chat import method_for, split_messages
from gateway.sessions import (
    check_session_name,
    is_idle,
    pointer_key,
    reset_sessions,
    resolve_session,
)
from vars_core.config import load_config
from vars_core.embedder import default_embedder
from vars_core.engine import Engine
from vars_core.live import begin_turn, first_step, start_live_session
from vars_core.reply_stream import Done, Failed, Memory, MemoryReplySink
from vars_core.stages import run_stage
from vars_core.store import MemoryBackend, StateStore
from vars_core.types import GenerateResult, LiveOptions, Message, RetrieveResult

pytest_plugins = ["tests.llm_servers"]

BULLETS = "When answering any question, use bullet points for the key points."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- errors


def _decode_error(body: bytes) -> APIError:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)) as exc:
        msgspec.json.decode(body, type=ChatRequest)
    return from_validation(exc.value)


def test_a_malformed_body_names_the_field() -> None:
    cases = {
        b'{"messages": [{"role": "user", "content": "hi"}]}': "model",
        b'{"model": "vars", "messages": [{"content": "hi"}]}': "messages[0].role",
        b'{"model": "vars", "messages": [{"role": "boss", "content": "hi"}]}': "messages[0].role",
        b'{"model": "vars", "messages": []}': "messages",
        b'{"model": "vars", "messages": [{"role": "user", "content": 3}]}': "messages[0].content",
        b'{"model": "vars", "messages": [{"role": "user", "content": "x"}], "n": 2}': "n",
    }
    for body, param in cases.items():
        error = _decode_error(body)
        assert (error.status, error.body.param, error.body.type) == (400, param, "invalid_request_error"), body
        assert f"`{param}`" in error.body.message
    junk = _decode_error(b"{nope")
    assert junk.status == 400 and junk.body.param is None and "not valid JSON" in junk.body.message


def test_errors_have_the_openai_shape() -> None:
    response = rate_limited(0.2).response()
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert msgspec.json.decode(response.body) == {
        "error": {
            "message": "rate limit of this API key exceeded; retry in 1 s",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


def test_the_last_message_is_the_turn_and_the_rest_is_history() -> None:
    messages = [
        ChatMessage("developer", "Be brief."),
        ChatMessage("user", "Hi"),
        ChatMessage("tool", "ignored"),
        ChatMessage("assistant", "Hello."),
        ChatMessage("user", " What now? "),
    ]
    text, history = split_messages(messages)
    assert text == "What now?"
    assert history == [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello.")]
    parts = msgspec.convert({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}, ChatMessage)
    assert parts.text() == "a"
    with pytest.raises(APIError) as last:
        split_messages([ChatMessage("user", "hi"), ChatMessage("assistant", "yo")])
    assert last.value.body.param == "messages[1].role"
    with pytest.raises(APIError) as empty:
        split_messages([ChatMessage("user", "   ")])
    assert empty.value.body.param == "messages[0].content"


def test_the_model_name_picks_the_method() -> None:
    assert method_for("vars-rag", "rag_vector") == "rag"
    assert method_for("vars", "all_memory") == "all_memory"
    for bad in ("gpt-4o", "vars-", "vars-nope", "varsrag"):
        with pytest.raises(APIError) as exc:
            method_for(bad, "rag_vector")
        assert exc.value.status == 404 and exc.value.body.code == "model_not_found"


# --------------------------------------------------------------------------- keys


def test_keys_are_stored_hashed_bound_to_users_and_revocable() -> None:
    backend = MemoryBackend()
    keys = KeyStore(backend)
    key, record = keys.create(["alice", "bob"], tenant="acme", rate_per_s=2.0)
    assert key.startswith("vars-") and len(key) > 40
    assert key.encode() not in b"".join(v for v in backend.hgetall(keys.records).values())
    assert key not in backend.hgetall(keys.digests)
    found = keys.lookup(key)
    assert found == record and found.may_act_for("alice") and not found.may_act_for("carol")
    assert found.store_user_id("bob") == "acme/bob"
    assert keys.lookup("vars-" + "x" * 43) is None

    other, _ = keys.create(["carol"])
    keys.revoke(record.key_id)
    assert keys.lookup(key) is None and keys.get(record.key_id).revoked_at is not None
    keys.revoke(other)  # by the key itself
    assert keys.lookup(other) is None
    assert [r.revoked_at is not None for r in keys.list()] == [True, True]
    with pytest.raises(KeyRefused):
        keys.revoke("nope")
    for users, tenant in ((["a/b"], "default"), ([], "default"), (["ok"], "bad/tenant"), (["has space"], "t")):
        with pytest.raises(KeyRefused):
            keys.create(users, tenant=tenant)


def test_a_cached_lookup_expires() -> None:
    keys, clock = KeyStore(MemoryBackend()), Clock()
    key, record = keys.create(["alice"])
    cache = KeyCache(keys, ttl_s=1.0, clock=clock)
    assert cache.lookup(key) == record
    keys.revoke(record.key_id)
    assert cache.lookup(key) == record  # within the ttl
    clock.now += 1.5
    assert cache.lookup(key) is None


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token(None) is None and bearer_token("Basic abc") is None and bearer_token("Bearer ") is None


# --------------------------------------------------------------------------- rate limit


def test_token_bucket_arithmetic() -> None:
    decision, left = take(tokens=2.0, last=0.0, now=0.0, rate=1.0, burst=2.0)
    assert decision.allowed and left == 1.0
    decision, left = take(tokens=0.0, last=0.0, now=0.25, rate=1.0, burst=2.0)
    assert not decision.allowed and decision.retry_after_s == pytest.approx(0.75) and left == 0.25
    _, left = take(tokens=0.0, last=0.0, now=100.0, rate=1.0, burst=2.0)
    assert left == 1.0  # refilled to the burst, never past it


def test_memory_rate_limiter_per_key() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)

    async def burst(key: str, n: int) -> list[bool]:
        return [(await limiter.check(key, 1.0, 3)).allowed for _ in range(n)]

    assert asyncio.run(burst("a", 4)) == [True, True, True, False]
    assert asyncio.run(burst("b", 1)) == [True]  # another key has its own bucket
    clock.now += 1.0
    assert asyncio.run(burst("a", 2)) == [True, False]


# --------------------------------------------------------------------------- sessions


@pytest.fixture(scope="module")
def engine() -> Engine:
    engine = Engine()
    engine._embedder = default_embedder()
    return engine


def test_session_names_and_idle_rule() -> None:
    assert check_session_name("chat-1:a.b_c") == "chat-1:a.b_c"
    for bad in ("", "has space", "{x}", "a" * 129):
        with pytest.raises(ValueError):
            check_session_name(bad)
    assert not is_idle(None, 100.0, 10.0)
    assert not is_idle(95.0, 100.0, 10.0) and is_idle(80.0, 100.0, 10.0)
    assert not is_idle(0.0, 1e9, 0.0)  # 0: never


def test_a_default_session_ends_when_idle_and_a_named_one_does_not(engine) -> None:
    store = StateStore()
    user = "t/alice"

    def resolve(name, method="rag_vector", now=None):
        return resolve_session(engine, store, user, name, method, "hi", 60.0, now)

    def turn(session) -> int:
        return begin_turn(engine, store, session, "hi")

    first = resolve(None, now=0.0)
    turn(first)
    last = store.last_progress(first.session_id)
    assert resolve(None, now=last + 30).session_id == first.session_id
    named = resolve("work", now=last)
    assert named.session_id != first.session_id
    later = resolve(None, now=last + 61)
    assert later.session_id != first.session_id  # idle: a new session
    assert store.session_record(first.session_id) is not None  # the old one was ended
    assert resolve("work", now=last + 10_000).session_id == named.session_id  # named: no idle end
    assert resolve("work", method="rag", now=last).session_id != named.session_id  # another method
    assert pointer_key(store, user, "work").startswith(store.user(user).prefix)

    assert reset_sessions(engine, store, user, "work") == 1
    assert reset_sessions(engine, store, user) == 1  # the default one was left
    assert reset_sessions(engine, store, user) == 0


# --------------------------------------------------------------------------- live generate


def _live_turn(engine: Engine, store: StateStore, user: str, text: str, method: str = "rag_vector"):
    sinks: dict[tuple[str, int], MemoryReplySink] = {}
    engine.reply_sink = lambda _store, sid, turn: sinks.setdefault((sid, turn), MemoryReplySink())
    session = start_live_session(engine, store, user, method, text)
    turn = begin_turn(engine, store, session, text, LiveOptions(max_tokens=16))
    step = first_step(session, turn)
    stages = []
    while step is not None:
        stages.append(step.stage)
        step = run_stage(engine, store, session.session_id, step.turn, step.stage)
    return session, turn, stages, sinks[(session.session_id, turn)]


def test_a_live_turn_streams_into_the_sink_then_stops(engine) -> None:
    store = StateStore()
    session, turn, stages, sink = _live_turn(engine, store, "t/bob", f"{BULLETS} What is 2+2?")
    assert stages == ["extract", "retrieve", "generate"]  # turn 1: no judge yet; nothing after
    deltas, done = sink.entries[:-1], sink.entries[-1]
    assert len(deltas) > 5 and isinstance(done, Done) and done.finish_reason == "stop"
    committed = store.stage_output(session.session_id, turn, "generate", GenerateResult)
    assert sink.text == committed.reply.content and done.usage == committed.reply.usage
    retrieved = store.stage_output(session.session_id, turn, "retrieve", RetrieveResult)
    assert done.memories == [Memory(BULLETS, retrieved.card_ids[0])]


def test_a_live_turn_streams_an_llm_with_its_real_usage(faulty, closed_url) -> None:
    url, seen = faulty.url(reply="one two three")
    engine = Engine(load_config({"agent": {"kind": "openai", "base_url": url, "model": "m", "max_retries": 0}}))
    store = StateStore()
    session, turn, _, sink = _live_turn(engine, store, "t/carol", "Hello?", method="vanilla")
    assert [e.text for e in sink.entries[:-1]] == ["one", " two", " three"]
    done = sink.entries[-1]
    assert isinstance(done, Done) and done.usage.prompt_tokens == 7 and not done.usage_estimated
    assert seen.bodies[-1]["stream"] is True and seen.bodies[-1]["max_tokens"] == 16

    broken = Engine(load_config({"agent": {"kind": "openai", "base_url": closed_url, "model": "m", "max_retries": 0}}))
    session, turn, _, sink = _live_turn(broken, store, "t/dan", "Hello?", method="vanilla")
    assert isinstance(sink.entries[-1], Failed)
    # The turn is answered (empty): the session is not stuck behind it.
    assert store.stage_output(session.session_id, turn, "generate", GenerateResult).reply.content == ""
    assert begin_turn(broken, store, session, "Again?") == turn + 1
