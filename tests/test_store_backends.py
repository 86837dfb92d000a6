"""The KV backend contract, on MemoryBackend and on a real Redis, and the state store on both."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scheduler.embedded_redis import EmbeddedRedis
from vars_core.store.backend import KVBackend, MemoryBackend, Op
from vars_core.store.connect import connect, redis_url_from_env
from vars_core.store.redis_backend import RedisBackend, glob_escape
from vars_core.store.state import PartitionError, StateStore
from vars_core.types import Card, CardEmbedding, Message, Problem, SessionState, UserVector

TEST_REDIS_URL = (
    os.environ.get("VARS_TEST_REDIS_URL") or redis_url_from_env() or "redis://127.0.0.1:6379/0"
)


def _reachable(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    """The Redis at TEST_REDIS_URL, else an embedded redis-server in a temporary home."""
    client = connect(TEST_REDIS_URL, connect_timeout=1.0, retries=0)
    if _reachable(client):
        yield client
        client.close()
        return
    home = Path(tempfile.mkdtemp(prefix="vh-", dir="/tmp"))
    embedded = EmbeddedRedis(home)
    try:
        client = connect(embedded.start())
    except RuntimeError as exc:
        pytest.skip(f"no Redis at {TEST_REDIS_URL} and no embedded one ({exc})")
    try:
        yield client
    finally:
        client.close()
        embedded.stop()
        shutil.rmtree(home, ignore_errors=True)


def _cleanup(client: redis.Redis, ns: str) -> None:
    keys = list(client.scan_iter(match=glob_escape(ns) + "*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(params=["memory", "redis"])
def kv(request: pytest.FixtureRequest) -> Iterator[tuple[KVBackend, str]]:
    """A backend and a key namespace no other test uses."""
    ns = f"vtest:{uuid.uuid4().hex}:"
    if request.param == "memory":
        yield MemoryBackend(), ns
        return
    client = request.getfixturevalue("redis_client")
    yield RedisBackend(client), ns
    _cleanup(client, ns)


@pytest.fixture
def rkv(redis_client: redis.Redis) -> Iterator[tuple[RedisBackend, str, redis.Redis]]:
    ns = f"vtest:{uuid.uuid4().hex}:"
    yield RedisBackend(redis_client), ns, redis_client
    _cleanup(redis_client, ns)


# --------------------------------------------------------------------------- raw ops


def test_string_ops(kv: tuple[KVBackend, str]) -> None:
    b, ns = kv
    assert b.get(ns + "a") is None and not b.exists(ns + "a")
    assert b.apply([Op("set", ns + "a", value=b"\x00\xffbytes"), Op("incr", ns + "n")])
    assert b.get(ns + "a") == b"\x00\xffbytes" and b.exists(ns + "a")
    b.apply([Op("incr", ns + "n", value=b"41"), Op("incr", ns + "m", value=b"-3")])
    assert b.get(ns + "n") == b"42" and b.get(ns + "m") == b"-3"
    b.apply([Op("del", ns + "a"), Op("del", ns + "never")])
    assert b.get(ns + "a") is None and not b.exists(ns + "a")


def test_list_ops(kv: tuple[KVBackend, str]) -> None:
    b, ns = kv
    key = ns + "list"
    assert b.lrange(key) == [] and b.llen(key) == 0
    b.apply([Op("rpush", key, value=v) for v in (b"a", b"b", b"c")])
    assert b.lrange(key) == [b"a", b"b", b"c"]
    assert b.lrange(key, 0, 1) == [b"a", b"b"]
    assert b.lrange(key, 1) == [b"b", b"c"]
    assert b.lrange(key, 0, -2) == [b"a", b"b"]
    assert b.llen(key) == 3


def test_hash_ops(kv: tuple[KVBackend, str]) -> None:
    b, ns = kv
    key = ns + "h"
    assert b.hgetall(key) == {} and b.hget(key, "x") is None
    b.apply([Op("hset", key, "x", b"1"), Op("hset", key, "y", b"2"), Op("hset", key, "x", b"3")])
    assert b.hget(key, "x") == b"3"
    assert b.hgetall(key) == {"x": b"3", "y": b"2"}
    b.apply([Op("hdel", key, "x"), Op("hdel", key, "missing")])
    assert b.hgetall(key) == {"y": b"2"}


def test_scan_matches_the_literal_prefix(kv: tuple[KVBackend, str]) -> None:
    b, ns = kv
    keys = [
        f"{ns}u:{{a*}}:1",
        f"{ns}u:{{ab}}:1",
        f"{ns}u:{{a?}}:2",
        f"{ns}u:[x]:1",
        f"{ns}u:x:1",
        f"{ns}u:\\:1",
    ]
    b.apply([Op("set", k, value=b"1") for k in keys])
    assert b.scan(f"{ns}u:{{a*}}") == [f"{ns}u:{{a*}}:1"]
    assert b.scan(f"{ns}u:{{a?}}") == [f"{ns}u:{{a?}}:2"]
    assert b.scan(f"{ns}u:[x]") == [f"{ns}u:[x]:1"]
    assert b.scan(f"{ns}u:\\") == [f"{ns}u:\\:1"]
    assert b.scan(f"{ns}u:{{a") == sorted(keys[:3])
    assert b.scan(ns) == sorted(keys)
    assert b.scan(ns + "nothing") == []


# --------------------------------------------------------------------------- apply


def test_apply_is_idempotent_on_the_marker(kv: tuple[KVBackend, str]) -> None:
    b, ns = kv
    marker = ns + "done:1:judge"
    first = [
        Op("set", ns + "out", value=b"first"),
        Op("rpush", ns + "msgs", value=b"m"),
        Op("hset", ns + "h", "f", b"1"),
        Op("incr", ns + "n"),
    ]
    assert b.apply(first, marker=marker) is True
    assert b.exists(marker)
    second = [
        Op("set", ns + "out", value=b"second"),
        Op("rpush", ns + "msgs", value=b"m2"),
        Op("hset", ns + "h", "g", b"2"),
        Op("incr", ns + "n"),
        Op("del", ns + "out"),
    ]
    assert b.apply(second, marker=marker) is False
    assert b.get(ns + "out") == b"first"
    assert b.lrange(ns + "msgs") == [b"m"]
    assert b.hgetall(ns + "h") == {"f": b"1"}
    assert b.get(ns + "n") == b"1"


def test_apply_is_atomic_for_concurrent_readers(kv: tuple[KVBackend, str]) -> None:
    """A reader never sees half of an apply: a and b are always written together."""
    b, ns = kv
    a_key, b_key = ns + "a", ns + "b"
    b.apply([Op("set", a_key, value=b"0"), Op("set", b_key, value=b"0")])
    torn: list[tuple[bytes | None, bytes | None]] = []
    stop = threading.Event()

    def snapshot() -> tuple[list[Op], tuple[bytes | None, bytes | None]]:
        # A scratch write makes the transaction EXEC, which validates the two reads.
        return [Op("set", ns + "scratch", value=b"r")], (b.get(a_key), b.get(b_key))

    def reader() -> None:
        while not stop.is_set():
            pair = b.transact([a_key, b_key], snapshot)
            if pair[0] != pair[1]:
                torn.append(pair)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 300):
            v = str(i).encode()
            # Filler ops widen the window a non-atomic apply would leave between a and b.
            filler = [Op("rpush", ns + "fill", value=v)] * 10
            assert b.apply(
                [Op("set", a_key, value=v), *filler, Op("set", b_key, value=v)], marker=f"{ns}m:{i}"
            )
    finally:
        stop.set()
        thread.join()
    assert torn == []
    assert b.get(a_key) == b.get(b_key) == b"299"


def test_redis_apply_writes_nothing_when_an_op_would_fail(
    rkv: tuple[RedisBackend, str, redis.Redis],
) -> None:
    b, ns, _ = rkv
    b.apply([Op("set", ns + "str", value=b"text")])
    bad = [
        Op("set", ns + "x", value=b"1"),
        Op("rpush", ns + "str", value=b"v"),
        Op("set", ns + "y", value=b"2"),
    ]
    with pytest.raises(redis.ResponseError, match="rpush on a string"):
        b.apply(bad, marker=ns + "marker")
    assert b.get(ns + "x") is None and b.get(ns + "y") is None
    assert not b.exists(ns + "marker")
    # Types are tracked through the batch: a key deleted first may change type.
    assert b.apply([Op("del", ns + "str"), Op("rpush", ns + "str", value=b"v")])
    assert b.lrange(ns + "str") == [b"v"]
    with pytest.raises(redis.ResponseError, match="non-integer"):
        b.apply([Op("set", ns + "c", value=b"abc"), Op("incr", ns + "c")])
    assert b.get(ns + "c") is None
    assert b.apply([Op("set", ns + "c", value=b"5"), Op("incr", ns + "c", value=b"2")])
    assert b.get(ns + "c") == b"7"


def test_redis_backend_rejects_decoding_clients() -> None:
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisBackend(redis.Redis(decode_responses=True))


# --------------------------------------------------------------------------- transact


def test_transact_counter_from_two_threads(kv: tuple[KVBackend, str]) -> None:
    b, ns = kv
    key = ns + "counter"
    runs = [0]

    def bump() -> tuple[list[Op], int]:
        runs[0] += 1
        n = int(b.get(key) or b"0") + 1
        return [Op("set", key, value=str(n).encode())], n

    def worker() -> None:
        for _ in range(200):
            b.transact([key], bump)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.get(key) == b"400"
    assert runs[0] >= 400


def test_redis_transact_reruns_build_after_a_watched_write(
    rkv: tuple[RedisBackend, str, redis.Redis],
) -> None:
    b, ns, client = rkv
    key = ns + "v"
    b.apply([Op("set", key, value=b"10")])
    seen: list[bytes | None] = []

    def build() -> tuple[list[Op], int]:
        current = b.get(key)
        seen.append(current)
        if len(seen) == 1:
            client.set(key, b"20")  # another client writes between our read and EXEC
        n = int(current or b"0") + 1
        return [Op("set", key, value=str(n).encode())], n

    assert b.transact([key], build) == 21
    assert seen == [b"10", b"20"]
    assert b.get(key) == b"21"


def test_transact_without_watch_and_without_ops(kv: tuple[KVBackend, str]) -> None:
    b, ns = kv
    assert b.transact([], lambda: ([Op("set", ns + "k", value=b"v")], "ok")) == "ok"
    assert b.get(ns + "k") == b"v"
    assert b.transact([ns + "k"], lambda: ([], b.get(ns + "k"))) == b"v"


# --------------------------------------------------------------------------- state store


def _store(kv: tuple[KVBackend, str]) -> StateStore:
    backend, ns = kv
    return StateStore(backend, namespace=ns.rstrip(":"))


def _card(user: str, cid: str, superseded_by: str | None = None) -> Card:
    return Card(
        card_id=cid,
        user_id=user,
        condition="writing code",
        action=f"use snake_case ({cid})",
        note=f"When writing code, use snake_case ({cid}).",
        superseded_by=superseded_by,
    )


def test_user_scope_round_trip(kv: tuple[KVBackend, str]) -> None:
    store = _store(kv)
    alice = store.user("camp:rag:alice")
    emb = CardEmbedding(
        note=[1.0, 0.0], condition=[0.0, 1.0], item=[0.5, -0.5], projection_version="p1"
    )
    ops = [
        *alice.put_card_ops(_card(alice.user_id, "c1"), emb),
        *alice.put_card_ops(_card(alice.user_id, "c0", superseded_by="c1"), None),
        alice.bump_version_op(),
    ]
    assert store.backend.apply(ops)
    assert list(alice.cards()) == ["c1"]
    assert list(alice.cards(include_superseded=True)) == ["c0", "c1"]
    assert alice.cards_by_id(["c1"])[0].action == "use snake_case (c1)"
    assert alice.embeddings() == {"c1": emb}
    assert alice.version() == 1

    zero = alice.vector(dim=3, projection_version="p1")
    assert zero.z_long == [0.0, 0.0, 0.0] and zero.projection_version == "p1"
    vec = UserVector(z_long=[0.1, 0.2], z_short=[0.3, 0.4], baseline=0.5, updates=2)
    store.backend.apply([alice.put_vector_op(vec)])
    assert alice.vector(dim=2) == vec

    bob = store.user("camp:rag:bob")
    assert bob.cards() == {} and bob.version() == 0
    with pytest.raises(PartitionError):
        bob.cards_by_id(["c1"])
    with pytest.raises(PartitionError):
        bob.put_card_ops(_card(alice.user_id, "c9"), None)
    assert store.backend.scan(store.keys.user(bob.user_id, "")) == []
    assert len(store.backend.scan(store.keys.user(alice.user_id, ""))) == 4


def test_sessions_messages_and_commits(kv: tuple[KVBackend, str]) -> None:
    store = _store(kv)
    state = SessionState(
        session_id="s1",
        user_id="u1",
        method="rag",
        profile_id="p1",
        session_index=0,
        problem=Problem("q1", "math", "1+1?", "2"),
        max_turns=5,
        seed=7,
    )
    store.backend.apply([store.put_session_op(state)])
    assert store.session("s1") == state
    with pytest.raises(KeyError):
        store.session("nope")

    msg = Message(role="user", content="hi", turn=1)
    out = UserVector(z_long=[1.0], z_short=[2.0])
    ops = [store.append_message_op("s1", msg), store.stage_output_op("s1", 1, "update", out)]
    assert not store.is_committed("s1", 1, "update")
    assert store.commit_stage("s1", 1, "update", ops) is True
    assert store.commit_stage("s1", 1, "update", ops) is False
    assert store.messages("s1") == [msg]
    assert store.is_committed("s1", 1, "update")
    assert store.stage_output("s1", 1, "update", UserVector) == out
    assert store.stage_output("s1", 2, "update", UserVector) is None


def test_transact_stage_commits_once(kv: tuple[KVBackend, str]) -> None:
    store = _store(kv)
    user = store.user("u1")

    def build() -> list[Op]:
        vec = user.vector(dim=1)
        new = UserVector(z_long=[vec.z_long[0] + 1.0], z_short=[0.0], updates=vec.updates + 1)
        return [user.put_vector_op(new)]

    assert store.transact_stage("s1", 3, "update", [user.vector_key], build) is True
    assert store.transact_stage("s1", 3, "update", [user.vector_key], build) is False
    assert user.vector(dim=1).z_long == [1.0]
    assert user.vector(dim=1).updates == 1
    assert store.is_committed("s1", 3, "update")


def test_every_read_works_inside_transact(kv: tuple[KVBackend, str]) -> None:
    b, ns = kv
    b.apply(
        [
            Op("set", ns + "s", value=b"1"),
            Op("rpush", ns + "l", value=b"x"),
            Op("hset", ns + "h", "f", b"v"),
        ]
    )

    def build() -> tuple[list[Op], tuple[object, ...]]:
        reads = (
            b.get(ns + "s"),
            b.exists(ns + "s"),
            b.lrange(ns + "l"),
            b.llen(ns + "l"),
            b.hget(ns + "h", "f"),
            b.hgetall(ns + "h"),
            b.scan(ns + "h"),
        )
        return [Op("incr", ns + "s")], reads

    reads = b.transact([ns + "s", ns + "l", ns + "h"], build)
    assert reads == (b"1", True, [b"x"], 1, b"v", {"f": b"v"}, [ns + "h"])
    assert b.get(ns + "s") == b"2"
