"""Security: pickle is refused on every queue (never even loaded); the user partition holds
on every read path (retrieval, the memory API, export); API keys never cross users or
tenants, revoked ones open nothing; secrets never reach a log line, an error, a reply or
the store.

One stack serves the integration tests: an embedded Redis, one worker per stage logging
at DEBUG with an agent API key in its environment, and a stand-in OpenAI-compatible
server that demands that key (and, for the model "echo", answers 401 quoting the
Authorization header back, as some proxies do)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest

from gateway.auth import KeyStore
from queues.events import StageTask
from queues.topology import all_queues
from scheduler.local import worker_command
from scheduler.spec import Backends, CampaignSpec
from tests.pipeline_harness import Pipeline
from vars_core.personalized import PersonalizedLLM
from vars_core.store.backend import Op
from vars_core.store.state import PartitionError, encode
from vars_core.types import STAGES, Card

SECRET_ENV = "VARS_TEST_AGENT_KEY"
SECRET = "sk-test-" + secrets.token_urlsafe(24)
BULLETS = "When answering any question, use bullet points for the key points."
SNAKE = "When writing python code, use snake_case names."


# --------------------------------------------------------------------------- the stack


class AgentServer:
    """An OpenAI-compatible chat server that answers only requests bearing SECRET."""

    def __init__(self) -> None:
        self.seen: list[str] = []  # Authorization headers received
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                auth = self.headers.get("authorization", "")
                server.seen.append(auth)
                if body.get("model") == "echo":  # a proxy that quotes the credentials back
                    self._send(401, {"error": {"message": f"Incorrect API key provided: {auth}"}})
                elif auth != f"Bearer {SECRET}":
                    self._send(401, {"error": {"message": "no such key"}})
                else:
                    self._send(200, {
                        "id": "c1", "object": "chat.completion", "model": body.get("model", ""),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 4."}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    })

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class DebugPipeline(Pipeline):
    """The test pipeline, its workers logging at DEBUG with the agent key in their
    environment."""

    def start(self) -> DebugPipeline:
        self.url = self.redis.start()
        self._saved_url = os.environ.get("REDIS_URL")
        os.environ["REDIS_URL"] = self.url
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "REDIS_URL": self.url, "PYTHONUNBUFFERED": "1", SECRET_ENV: SECRET}
        self.procs = [
            subprocess.Popen(
                [*worker_command(stage, 1), "--loglevel", "DEBUG"],
                env=env,
                stdout=(logs / f"worker-{stage}.log").open("ab"),
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            for stage in STAGES
        ]
        return self


def agent(model: str, url: str) -> Backends:
    return Backends(agent={"kind": "openai", "base_url": url, "model": model, "api_key_env": SECRET_ENV, "max_retries": 0})


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    server = AgentServer()
    pipeline = DebugPipeline(tmp_path_factory.mktemp("security-home")).start()
    try:
        yield pipeline, server
    finally:
        pipeline.stop()
        server.stop()


@pytest.fixture(scope="module")
def campaigns(stack, tmp_path_factory):
    """Three campaigns at once: ``plain`` (scripted), ``keyed`` (its agent on the key-checking
    server) and ``echo`` (whose server quotes the key back in a 401: the session fails)."""
    from scheduler.campaigns import follow, launch
    from vars_core.engine import Engine

    pipeline, server = stack
    store, app, engine = pipeline.store(), pipeline.app(), Engine()
    base = {"profiles": 1, "max_turns": 2, "datasets": ["mmlu"], "seed": 4}
    specs = {
        "plain": CampaignSpec(name="plain", methods=["vanilla", "rag"], sessions=2, **base),
        "keyed": CampaignSpec(name="plain-keyed", methods=["vanilla"], sessions=2, backends=agent("fake", server.url), **base),
        "echo": CampaignSpec(name="echo", methods=["vanilla"], sessions=1, backends=agent("echo", server.url), **base),
    }
    plans = {name: launch(app, engine, store, spec) for name, spec in specs.items()}
    results = tmp_path_factory.mktemp("security-results")
    records = {name: follow(store, plan.campaign_id, results, poll_s=0.2, timeout_s=300) for name, plan in plans.items()}
    return plans, records


# --------------------------------------------------------------------------- pickle


class Planted:
    """Unpickling it would create a directory: proof that a pickle was never loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


@pytest.mark.integration
@pytest.mark.slow
def test_a_pickled_event_is_refused_on_every_queue_never_loaded_never_run(stack, campaigns):
    from workers.tasks import deadletter_key, hops_key

    pipeline, _ = stack
    plans, _ = campaigns
    store, app = pipeline.store(), pipeline.app()
    session_id = f"{plans['plain'].campaign_id}:rag:{plans['plain'].profile_ids[0]}:s1"
    hops = store.backend.lrange(hops_key(store, session_id))
    transcript = store.messages(session_id)
    dead = deadletter_key(store)
    before = store.backend.llen(dead)
    planted = []
    for queue in all_queues():
        stage, lane = queue.name.split(".")[1], "live" if queue.name.endswith(".live") else "campaign"
        # Accepted, this would run the stage (a hop is recorded even for a finished turn).
        event = msgspec.to_builtins(StageTask(session_id, 1, stage, lane))  # type: ignore[arg-type]
        planted.append(pipeline.home / f"unpickled-{queue.name}")
        app.send_task(f"vars.{stage}", args=[{**event, "x": Planted(planted[-1])}], queue=queue.name, serializer="pickle")

    pipeline.wait_for(lambda: store.backend.llen(dead) >= before + len(planted) and pipeline.queues_empty(), what="the pickles")
    time.sleep(1.0)
    entries = [msgspec.json.decode(e) for e in store.backend.lrange(dead, before, -1)]
    assert sorted(e["event"]["queue"] for e in entries) == sorted(q.name for q in all_queues())
    assert all(e["event"]["content_type"] == "application/x-python-serialize" for e in entries)
    assert all("untrusted content" in e["reason"] for e in entries)
    assert not any(p.exists() for p in planted), "a pickle was loaded"
    assert store.backend.lrange(hops_key(store, session_id)) == hops, "a pickled event ran"
    assert store.messages(session_id) == transcript
    assert pipeline.alive()


# --------------------------------------------------------------------------- export


def export(campaign_id: str, capsysbinary) -> list[dict]:
    from scheduler.cli import main

    capsysbinary.readouterr()
    assert main(["campaign", "export", campaign_id]) == 0
    return [json.loads(line) for line in capsysbinary.readouterr().out.splitlines() if line.strip()]


@pytest.mark.integration
@pytest.mark.slow
def test_export_of_a_campaign_holds_its_own_records_and_no_others(stack, campaigns, capsysbinary):
    from vars_core.campaign import finished_session_ids

    pipeline, _ = stack
    plans, records = campaigns
    store = pipeline.store()
    ids = {name: plan.campaign_id for name, plan in plans.items()}
    assert ids["keyed"].startswith(ids["plain"].split("-")[0])  # names that share a prefix
    for name, campaign_id in ids.items():
        lines = export(campaign_id, capsysbinary)
        assert sorted(line["session_id"] for line in lines) == sorted(r.session_id for r in records[name])
        assert all(line["session_id"].startswith(campaign_id + ":") for line in lines)
    # A session id of another campaign in this one's finished list (a stray write) is
    # not exported: the export reads this campaign's records only.
    stray = finished_session_ids(store, ids["keyed"])[0]
    store.backend.apply([Op("rpush", store.keys.campaign(ids["plain"], "finished"), value=stray.encode())])
    lines = export(ids["plain"], capsysbinary)
    assert stray not in {line["session_id"] for line in lines}
    assert len(lines) == len(records["plain"])


# --------------------------------------------------------------------------- keys and the memory API


def card(user_id: str, note: str, card_id: str | None = None) -> Card:
    condition, action = note.removeprefix("When ").rstrip(".").split(", ", 1)
    return Card(card_id or f"c-{secrets.token_hex(4)}", user_id, condition, action, note)


def put_cards(store, *cards: Card) -> None:
    ops = [op for c in cards for op in store.user(c.user_id).put_card_ops(c, None)]
    ops += [store.user(c.user_id).bump_version_op() for c in cards]
    store.backend.apply(ops)


@pytest.fixture(scope="module")
def gateway(stack):
    from starlette.testclient import TestClient

    from gateway.app import build_app
    from gateway.settings import GatewaySettings

    pipeline, _ = stack
    with TestClient(build_app(pipeline.url, GatewaySettings(key_cache_s=0.0, chunk_timeout_s=60)), raise_server_exceptions=False) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.integration
@pytest.mark.slow
def test_keys_never_cross_tenants_or_users(stack, gateway):
    from gateway.turns import TurnRef

    pipeline, _ = stack
    store = pipeline.store()
    keys = KeyStore(store.backend)
    fast = {"rate_per_s": 1000.0, "burst": 1000}
    t1_alice, _ = keys.create(["alice"], tenant="t1", **fast)
    t1_bob, _ = keys.create(["bob"], tenant="t1", **fast)
    t1_both, _ = keys.create(["alice", "bob"], tenant="t1", **fast)
    t2_alice, _ = keys.create(["alice"], tenant="t2", **fast)
    mine = card("t1/alice", BULLETS)
    bobs = card("t1/bob", SNAKE)
    put_cards(store, mine, bobs)

    # Tenant boundary: "alice" under t2 is another user with her own (empty) memory.
    assert [c["id"] for c in gateway.get("/v1/users/alice/memory", headers=bearer(t1_alice)).json()["data"]] == [mine.card_id]
    assert gateway.get("/v1/users/alice/memory", headers=bearer(t2_alice)).json()["data"] == []
    assert gateway.delete(f"/v1/users/alice/memory/{mine.card_id}", headers=bearer(t2_alice)).status_code == 404
    assert gateway.delete("/v1/users/alice/memory", headers=bearer(t2_alice)).json()["deleted"] == []
    assert mine.card_id in store.user("t1/alice").cards()

    # A key for bob cannot read, delete or reset alice (path), nor talk as her (body).
    for method, path in (("GET", "memory"), ("DELETE", "memory"), ("DELETE", f"memory/{mine.card_id}"), ("POST", "sessions/reset")):
        resp = gateway.request(method, f"/v1/users/alice/{path}", headers=bearer(t1_bob))
        assert resp.status_code == 403 and resp.json()["error"]["param"] == "user", (method, path)
    chat = {"model": "vars-vanilla", "messages": [{"role": "user", "content": "Who am I?"}]}
    resp = gateway.post("/v1/chat/completions", json={**chat, "user": "alice"}, headers=bearer(t1_bob))
    assert resp.status_code == 403 and resp.json()["error"]["param"] == "user"
    # Near misses of a user id are other users, never alice.
    for crafted in ("ALICE", "alice ", "t1/alice", "alice}", "alice%2F..%2Fbob", "..%2Falice"):
        resp = gateway.get(f"/v1/users/{crafted}/memory", headers=bearer(t1_alice))
        assert resp.status_code in (403, 404), crafted
        assert mine.note not in resp.text
    # A key for both: alice's card id under bob's path is not found, and stays alice's.
    resp = gateway.delete(f"/v1/users/bob/memory/{mine.card_id}", headers=bearer(t1_both))
    assert resp.status_code == 404 and mine.card_id in store.user("t1/alice").cards()
    assert [c["id"] for c in gateway.get("/v1/users/bob/memory", headers=bearer(t1_both)).json()["data"]] == [bobs.card_id]

    # Feedback on a completion of t1/alice: not by t2's alice, not by t1's bob.
    completion = "chatcmpl-" + secrets.token_hex(6)
    pipeline.client().set(f"vars:gw:completion:{completion}", msgspec.msgpack.encode(TurnRef("t1/alice", "s-x", 1, "k")))
    for key in (t2_alice, t1_bob):
        resp = gateway.post("/v1/feedback", json={"completion_id": completion, "reward": 1.0}, headers=bearer(key))
        assert resp.status_code == 403, resp.text

    # A key bound to one user may leave `user` out: it acts for that user, in its tenant.
    resp = gateway.post("/v1/chat/completions", json=chat, headers=bearer(t2_alice))
    assert resp.status_code == 200, resp.text
    assert store.session(resp.headers["x-vars-session-id"]).user_id == "t2/alice"


@pytest.mark.integration
@pytest.mark.slow
def test_a_revoked_key_opens_nothing(stack, gateway):
    pipeline, _ = stack
    store = pipeline.store()
    keys = KeyStore(store.backend)
    key, record = keys.create(["dora"], tenant="t3", rate_per_s=1000.0, burst=1000)
    put_cards(store, card("t3/dora", BULLETS))
    assert gateway.get("/v1/users/dora/memory", headers=bearer(key)).status_code == 200
    keys.revoke(record.key_id)
    requests = [
        ("GET", "/v1/models", None), ("GET", "/v1/users/dora/memory", None),
        ("DELETE", "/v1/users/dora/memory", None), ("POST", "/v1/users/dora/sessions/reset", None),
        ("POST", "/v1/chat/completions", {"model": "vars", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/v1/feedback", {"completion_id": "chatcmpl-x", "reward": 1.0}),
    ]
    for method, path, body in requests:
        resp = gateway.request(method, path, json=body, headers=bearer(key))
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key", path
    assert store.user("t3/dora").cards()  # nothing was deleted


# --------------------------------------------------------------------------- retrieval


def test_retrieval_returns_only_the_users_own_cards_and_fails_closed_on_a_planted_one():
    llm = PersonalizedLLM.from_config()
    store = llm.store
    llm.chat("t/alice", BULLETS + " What is the capital of France?", method="rag")
    llm.chat("t/bob", SNAKE + " How do I name a helper in python code?", method="rag")
    (alice_card,) = store.user("t/alice").cards().values()
    (bob_card,) = store.user("t/bob").cards().values()

    def notes(user: str, query: str) -> list[str]:
        context = llm.chat_prepare(user, query, method="rag")
        llm.chat_complete("ok", context)
        return context.notes

    question = "Could you list the key points of python naming? Use any format."
    assert notes("t/bob", question) == [bob_card.note]
    assert notes("t/alice", question) == [alice_card.note]

    # Crafted ids: bob gets a card under alice's card id; each still sees only their own.
    twin = card("t/bob", "When answering any question, answer in one sentence.", alice_card.card_id)
    bob = store.user("t/bob")
    store.backend.apply([*bob.put_card_ops(twin, bob.embeddings()[bob_card.card_id]), bob.bump_version_op()])
    assert set(notes("t/bob", question)) == {bob_card.note, twin.note}
    assert notes("t/alice", question) == [alice_card.note]

    # Alice's embedding under an id bob has no card for: never a candidate of bob's.
    planted_id = "c-planted"
    embedding = store.user("t/alice").embeddings()[alice_card.card_id]
    store.backend.apply([Op("hset", store.user("t/bob").embeddings_key, planted_id, encode(embedding)), store.user("t/bob").bump_version_op()])
    assert alice_card.note not in notes("t/bob", question)

    # Alice's card record written under bob's keys: bob's read fails closed.
    store.backend.apply([Op("hset", store.user("t/bob").cards_key, "c-stolen", encode(alice_card)), store.user("t/bob").bump_version_op()])
    with pytest.raises(PartitionError):
        llm.chat_prepare("t/bob", question, method="rag")
    with pytest.raises(PartitionError):
        store.user("t/bob").cards()


# --------------------------------------------------------------------------- secrets


def redis_contents(client) -> bytes:
    """Every key and value in the database, concatenated."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        out.append(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"list":
            out += client.lrange(key, 0, -1)
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                out += [field, value]
        elif kind == b"set":
            out += list(client.smembers(key))
        elif kind == b"zset":
            out += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            out += [repr(entry).encode() for entry in client.xrange(key)]
    return b"\n".join(out)


@pytest.mark.integration
@pytest.mark.slow
def test_secrets_never_reach_a_log_line_an_error_a_reply_or_the_store(stack, campaigns, gateway, caplog):
    from scheduler.failures import campaign_failures

    pipeline, server = stack
    plans, records = campaigns
    store = pipeline.store()
    # The agent key was used: the server saw it, and the keyed campaign ran on it.
    assert f"Bearer {SECRET}" in server.seen
    assert [r.status for r in records["keyed"]] == ["done", "done"]
    # The echoing server's 401 failed its session, with a reason that names the cause
    # and not the key.
    assert [r.status for r in records["echo"]] == ["failed"]
    (failure,) = campaign_failures(store, plans["echo"].campaign_id)
    assert "HTTP 401" in failure.reason and "[api key]" in failure.reason and SECRET not in failure.reason

    # The gateway at DEBUG: a key in use, a wrong one, a revoked one.
    caplog.set_level(logging.DEBUG)
    keys = KeyStore(store.backend)
    key, record = keys.create(["erin"], tenant="t4", rate_per_s=1000.0, burst=1000)
    body = {"model": "vars-rag", "messages": [{"role": "user", "content": f"{BULLETS} What is 2+2?"}]}
    responses = [
        gateway.post("/v1/chat/completions", json=body, headers=bearer(key)),
        gateway.get("/v1/users/erin/memory", headers=bearer(key)),
        gateway.get("/v1/users/someone/memory", headers=bearer(key)),
        gateway.post("/v1/chat/completions", content=b"{bad", headers=bearer(key)),
        gateway.get("/v1/models", headers=bearer(key[:-1] + "x")),
    ]
    keys.revoke(record.key_id)
    responses.append(gateway.get("/v1/models", headers=bearer(key)))
    assert [r.status_code for r in responses] == [200, 200, 403, 400, 401, 401]
    assert caplog.records and logging.getLogger().level == logging.DEBUG  # every logger, DEBUG up
    listed = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "keys", "list"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "REDIS_URL": pipeline.url, "VARS_HOME": str(pipeline.home)},
    )
    assert listed.returncode == 0 and record.key_id in listed.stdout

    logs = "\n".join(p.read_text(errors="replace") for p in (pipeline.home / "logs").glob("*.log"))
    assert "DEBUG/" in logs, "the workers were not logging at DEBUG"
    contents = redis_contents(pipeline.client())
    for secret in (SECRET, key):
        assert secret not in logs, "a secret is in a worker's log"
        assert secret not in caplog.text, "a secret is in the gateway's log"
        assert secret not in listed.stdout + listed.stderr
        assert secret.encode() not in contents, "a secret is stored in Redis"
        for resp in responses:
            assert secret not in resp.text and secret not in str(resp.headers)


def test_an_embedding_server_that_echoes_the_key_does_not_put_it_in_the_error():
    from vars_core.embedders_http import ModelServerError, http_client, post_json

    server = AgentServer()
    try:
        with http_client(SECRET, 5.0) as client, pytest.raises(ModelServerError) as error:
            post_json(client, server.url + "/chat/completions", {"model": "echo"}, retries=0)
    finally:
        server.stop()
    assert "HTTP 401" in str(error.value) and "[api key]" in str(error.value) and SECRET not in str(error.value)
