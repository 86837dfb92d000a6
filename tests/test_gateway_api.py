"""The gateway end to end: the official `openai` client against `vars gateway`, real stage
workers and Redis, with the scripted agent where behaviour must be exact."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.gateway_harness import GatewayProcess, make_key, start_stack
from vars_core.reply_stream import stream_key
from vars_core.types import GenerateResult, RetrievalTrace, UserVector

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BULLETS = "When answering any question, use bullet points for the key points."
SNAKE = "When writing python code, use snake_case names."
DOCSTRINGS = "When writing a function for me, add a docstring to every function."
BULLET_LINE = re.compile(r"(?m)^- \S")
MODEL = "vars-rag_vector"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    pipeline, gateway = start_stack(tmp_path_factory.mktemp("gateway-home"))
    try:
        yield pipeline, gateway
    finally:
        gateway.stop()
        pipeline.stop()


@pytest.fixture(scope="module")
def pipeline(stack):
    return stack[0]


@pytest.fixture(scope="module")
def gateway(stack) -> GatewayProcess:
    return stack[1]


@pytest.fixture(scope="module")
def keys(pipeline):
    # Rate limits have their own test (test_gateway_limits); these keys must not meet them.
    fast = {"rate_per_s": 1000.0, "burst": 1000}
    shared, _ = make_key(pipeline, ["alice", "bob", "dave", "erin", "frank", "gina"], **fast)
    other, _ = make_key(pipeline, ["carol"], **fast)
    return shared, other


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=120)


def ask(c: openai.OpenAI, user: str, text: str, session: str | None = None, **extra):
    headers = {"X-Session-Id": session} if session else None
    return c.chat.completions.create(
        model=extra.pop("model", MODEL),
        user=user,
        messages=extra.pop("messages", None) or [{"role": "user", "content": text}],
        extra_headers=headers,
        **extra,
    )


def info(completion) -> dict:
    return completion.model_extra["vars"]


def notes(completion) -> list[str]:
    return [m["note"] for m in info(completion)["memories"]]


def test_plain_and_streamed_completions(pipeline, gateway, keys):
    c = client(gateway, keys[0])
    assert {MODEL, "vars-vanilla", "vars"} <= {m.id for m in c.models.list()}

    plain = ask(c, "dave", "What is the capital of France?")
    assert plain.object == "chat.completion" and plain.id.startswith("chatcmpl-")
    assert plain.choices[0].message.role == "assistant" and plain.choices[0].message.content.strip()
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage.completion_tokens > 0 and plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
    assert info(plain)["turn"] == 1

    stream = ask(c, "dave", "And the capital of Spain?", stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    closing = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(closing) == 1 and closing[0].choices[0].finish_reason == "stop"
    sid = closing[0].model_extra["vars"]["session_id"]
    assert sid == info(plain)["session_id"] and closing[0].model_extra["vars"]["turn"] == 2
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 5  # really streamed
    # What streamed is what the worker committed as the turn's reply.
    assert pipeline.store().messages(sid)[-1].content == text

    # Without include_usage there is no usage chunk.
    quiet = list(ask(c, "dave", "And of Italy?", stream=True))
    assert all(ch.usage is None for ch in quiet) and quiet[-1].choices[0].finish_reason == "stop"


def teach(c: openai.OpenAI, user: str, *prefs: str) -> None:
    reply = ask(c, user, " ".join(prefs) + " What is the capital of France?", session=f"teach-{user}")
    assert set(prefs) <= set(notes(reply))


def test_a_preference_said_in_one_session_shapes_a_later_session(gateway, keys):
    c = client(gateway, keys[0])
    teach(c, "alice", BULLETS)
    cards = httpx.get(f"{gateway.base_url}/users/alice/memory", headers={"Authorization": f"Bearer {keys[0]}"}).json()
    assert [card["note"] for card in cards["data"]] == [BULLETS]
    # A new session, and a question that says nothing about format. The scripted agent
    # honours a prompt directive with p = 0.97 per reply: three sessions make a miss
    # (0.03^3) negligible while each still shows the memory reaching the prompt.
    for attempt in range(3):
        later = ask(c, "alice", "Which planet is the largest in the solar system?", session=f"later-{attempt}")
        assert info(later)["turn"] == 1 and notes(later) == [BULLETS]
        if BULLET_LINE.search(later.choices[0].message.content):
            break
    else:
        pytest.fail("the remembered preference never shaped a reply")


def test_a_second_user_never_sees_the_first_users_memories(pipeline, gateway, keys):
    shared, other = keys
    c = client(gateway, shared)
    teach(c, "alice", BULLETS)
    for attempt in range(2):
        reply = ask(c, "bob", "Which planet is the largest in the solar system?", session=f"bob-{attempt}")
        assert notes(reply) == []
        assert not BULLET_LINE.search(reply.choices[0].message.content)  # no directive: prose
    assert pipeline.store().user("default/bob").cards(include_superseded=True) == {}
    listing = httpx.get(f"{gateway.base_url}/users/bob/memory", headers={"Authorization": f"Bearer {shared}"})
    assert listing.status_code == 200 and listing.json()["data"] == []
    # Another key cannot read or change alice's memory, nor talk as her.
    stranger = {"Authorization": f"Bearer {other}"}
    for method, path in (("GET", "memory"), ("DELETE", "memory"), ("POST", "sessions/reset")):
        resp = httpx.request(method, f"{gateway.base_url}/users/alice/{path}", headers=stranger)
        assert resp.status_code == 403 and resp.json()["error"]["type"] == "permission_error", (method, path)
    with pytest.raises(openai.PermissionDeniedError):
        ask(client(gateway, other), "alice", "What do you know about me?")
    assert pipeline.store().user("default/alice").cards()  # still there


def test_auth_and_malformed_bodies_get_openai_errors(gateway, keys):
    shared, other = keys
    with pytest.raises(openai.AuthenticationError) as bad_key:
        ask(client(gateway, "vars-not-a-key"), "alice", "hi")
    assert bad_key.value.status_code == 401
    assert bad_key.value.body == {
        "message": "invalid or revoked API key", "type": "authentication_error", "param": None, "code": "invalid_api_key",
    }
    with pytest.raises(openai.PermissionDeniedError) as not_yours:
        ask(client(gateway, other), "alice", "hi")
    assert not_yours.value.status_code == 403 and not_yours.value.param == "user"

    c = client(gateway, shared)
    with pytest.raises(openai.BadRequestError) as no_role:
        ask(c, "alice", "", messages=[{"content": "hi"}])
    assert no_role.value.param == "messages[0].role" and "messages[0].role" in no_role.value.message
    with pytest.raises(openai.BadRequestError) as bad_role:
        ask(c, "alice", "", messages=[{"role": "wizard", "content": "hi"}])
    assert bad_role.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as last_not_user:
        ask(c, "alice", "", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert last_not_user.value.param == "messages[1].role"
    with pytest.raises(openai.BadRequestError) as hot:
        ask(c, "alice", "hi", temperature=7)
    assert hot.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as no_user:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert no_user.value.param == "user"  # the key acts for several users
    with pytest.raises(openai.NotFoundError) as no_model:
        ask(c, "alice", "hi", model="gpt-4o")
    assert no_model.value.code == "model_not_found" and no_model.value.param == "model"
    raw = httpx.post(f"{gateway.base_url}/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {shared}"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.get(f"{gateway.base_url}/nowhere", headers={"Authorization": f"Bearer {shared}"})
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}


def feedback(gateway, key, **body) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/feedback", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_feedback_is_applied_once_through_the_update_path(pipeline, gateway, keys):
    shared, other = keys
    c = client(gateway, shared)
    # two ranked cards (a global one would bypass ranking): a list with a real choice in it
    teach(c, "erin", DOCSTRINGS, SNAKE)
    reply = ask(c, "erin", "How do I name a helper in python code?", session="fb")
    store = pipeline.store()
    user = store.user("default/erin")
    trace = store.backend.get(user.trace_key(info(reply)["session_id"], info(reply)["turn"]))
    assert trace is not None and len(store_decode(trace).candidate_ids) == 2
    before = user.vector(256).updates

    first = feedback(gateway, shared, completion_id=reply.id, reward=1.0)
    assert first.status_code == 200 and first.json()["applied"] is True
    assert user.vector(256).updates == before + 1
    again = feedback(gateway, shared, completion_id=reply.id, reward=1.0)
    assert again.status_code == 200 and again.json()["applied"] is False
    assert user.vector(256).updates == before + 1  # exactly once
    by_label = feedback(gateway, shared, completion_id=reply.id, label="pos_praise")
    assert by_label.json()["applied"] is False

    assert feedback(gateway, other, completion_id=reply.id, reward=1.0).status_code == 403
    assert feedback(gateway, shared, completion_id="chatcmpl-nope", reward=1.0).status_code == 404
    both = feedback(gateway, shared, completion_id=reply.id, reward=0.5, label="neutral")
    assert both.status_code == 400 and both.json()["error"]["param"] == "reward"
    out_of_range = feedback(gateway, shared, completion_id=reply.id, reward=3)
    assert out_of_range.status_code == 400 and out_of_range.json()["error"]["param"] == "reward"


def store_decode(data: bytes) -> RetrievalTrace:
    from vars_core.store.state import decode

    return decode(data, RetrievalTrace)


def test_deleting_memory_removes_cards_vectors_and_traces(pipeline, gateway, keys):
    shared = keys[0]
    auth = {"Authorization": f"Bearer {shared}"}
    c = client(gateway, shared)
    teach(c, "frank", BULLETS, SNAKE)
    liked = ask(c, "frank", "How do I name a variable in python code?", session="teach-frank")
    assert feedback(gateway, shared, completion_id=liked.id, reward=1.0).json()["applied"] is True
    store = pipeline.store()
    user = store.user("default/frank")
    assert user.stored_vector() is not None
    cards = httpx.get(f"{gateway.base_url}/users/frank/memory", headers=auth).json()["data"]
    assert {card["note"] for card in cards} == {BULLETS, SNAKE}
    assert set(cards[0]) >= {"id", "note", "condition", "action", "created_at"}
    doomed = next(card["id"] for card in cards if card["note"] == SNAKE)

    gone = httpx.delete(f"{gateway.base_url}/users/frank/memory/{doomed}", headers=auth)
    assert gone.status_code == 200 and gone.json()["deleted"] == [doomed]
    assert doomed not in user.cards(include_superseded=True) and doomed not in user.embeddings()
    for key in user.trace_keys():
        assert doomed not in store_decode(store.backend.get(key)).candidate_ids
    assert [card["note"] for card in httpx.get(f"{gateway.base_url}/users/frank/memory", headers=auth).json()["data"]] == [BULLETS]
    assert httpx.delete(f"{gateway.base_url}/users/frank/memory/{doomed}", headers=auth).status_code == 404
    assert SNAKE not in notes(ask(c, "frank", "How do I name a helper in python code?", session="after"))

    wiped = httpx.delete(f"{gateway.base_url}/users/frank/memory", headers=auth)
    assert wiped.status_code == 200 and wiped.json()["reset"] is True
    assert user.cards(include_superseded=True) == {} and user.embeddings() == {}
    assert user.stored_vector() is None and user.trace_keys() == []
    assert notes(ask(c, "frank", "How do I name a helper in python code?")) == []


def test_memory_keeps_compatible_preferences_and_shows_what_a_change_of_mind_replaced(gateway, keys):
    c = client(gateway, keys[0])
    auth = {"Authorization": f"Bearer {keys[0]}"}
    for text in ("Please always answer with numbered steps.", "I prefer short answers.", "What is 2 + 2?"):
        ask(c, "gina", text, session="mind")
    active = httpx.get(f"{gateway.base_url}/users/gina/memory", headers=auth).json()["data"]
    assert sorted(card["action"] for card in active) == ["answer with numbered steps", "prefer short answers"]
    ask(c, "gina", "Actually, give me long detailed answers.", session="mind")
    active = httpx.get(f"{gateway.base_url}/users/gina/memory", headers=auth).json()["data"]
    assert sorted(card["action"] for card in active) == ["answer with numbered steps", "give me long detailed answers"]
    assert {card["status"] for card in active} == {"active"}
    every = httpx.get(f"{gateway.base_url}/users/gina/memory?include=superseded", headers=auth).json()["data"]
    (old,) = [card for card in every if card["status"] == "superseded"]
    new = next(card for card in every if card["action"] == "give me long detailed answers")
    assert old["action"] == "prefer short answers"
    assert old["superseded_by"] == new["id"] and old["superseded_by_note"] == new["note"]
    bad = httpx.get(f"{gateway.base_url}/users/gina/memory?include=everything", headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "include"


def test_a_stateless_clients_history_seeds_a_new_session(pipeline, gateway, keys):
    c = client(gateway, keys[0])
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ]
    first = ask(c, "dave", "", session="stateless", messages=[*history, {"role": "user", "content": "What is 2+2?"}])
    sid = info(first)["session_id"]
    seeded = [(m.role, m.content, m.turn) for m in pipeline.store().messages(sid)]
    assert seeded[:3] == [("system", "Be brief.", 0), ("user", "Hello there.", 0), ("assistant", "Hello! How can I help?", 0)]
    assert seeded[3] == ("user", "What is 2+2?", 1) and info(first)["turn"] == 1
    # The server now has the history: a client resending it does not duplicate it.
    full = [*history, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": first.choices[0].message.content}]
    second = ask(c, "dave", "", session="stateless", messages=[*full, {"role": "user", "content": "And 3+3?"}])
    assert info(second)["turn"] == 2 and len(pipeline.store().messages(sid)) == 7


def test_a_client_that_disconnects_mid_stream_leaves_no_stuck_session(pipeline, gateway, keys):
    shared = keys[0]
    body = {"model": MODEL, "user": "dave", "stream": True, "messages": [{"role": "user", "content": "Explain the reasoning: why is the sky blue?"}]}
    headers = {"Authorization": f"Bearer {shared}", "X-Session-Id": "leaver"}
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200
        sid = resp.headers["x-vars-session-id"]
        next(resp.iter_lines())  # one event, then the client goes away
    c = client(gateway, shared)
    after = ask(c, "dave", "Still there?", session="leaver")
    assert info(after)["session_id"] == sid and info(after)["turn"] == 2
    # The abandoned turn was finished by the workers, not papered over.
    store = pipeline.store()
    assert store.stage_output(sid, 1, "generate", GenerateResult).reply.content.strip()
    assert pipeline.client().exists(stream_key(store, sid, 1))


def test_sessions_reset_starts_a_new_session(pipeline, gateway, keys):
    shared = keys[0]
    c = client(gateway, shared)
    before = info(ask(c, "dave", "Hello?"))["session_id"]
    resp = httpx.post(f"{gateway.base_url}/users/dave/sessions/reset", headers={"Authorization": f"Bearer {shared}"})
    assert resp.status_code == 200 and resp.json()["ended"] >= 1
    after = ask(c, "dave", "Hello again?")
    assert info(after)["session_id"] != before and info(after)["turn"] == 1
    assert pipeline.store().session_record(before) is not None  # the old one was ended properly


def test_metrics_and_health(gateway, keys):
    ask(client(gateway, keys[0]), "dave", "Count to three.", stream=True).close()
    text = httpx.get(gateway.url + "/metrics").text
    assert 'vars_gateway_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert "vars_gateway_ttft_seconds_bucket" in text
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok", "redis": True}


def _vars(pipeline, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "REDIS_URL": pipeline.url, "VARS_HOME": str(pipeline.home)}
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", *args], input=stdin, capture_output=True, text=True, timeout=120, env=env
    )


def test_keys_and_chat_commands(pipeline, gateway):
    made = _vars(pipeline, "keys", "create", "--users", "gina")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("vars-") and key not in str(pipeline.client().hgetall("vars:gw:keys"))
    key_id = made.stderr.split()[2].rstrip(":")

    chat = _vars(pipeline, "chat", "--user", "gina", "--key", key, "--base-url", gateway.base_url, stdin=f"{BULLETS} What is 2+2?\n/memory\n")
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert "memories used:" in chat.stdout and BULLETS in chat.stdout
    denied = _vars(pipeline, "chat", "--user", "alice", "--key", key, "--base-url", gateway.base_url, stdin="hi\n")
    assert denied.returncode == 1 and "HTTP 403" in denied.stdout

    revoked = _vars(pipeline, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and key_id in revoked.stdout
    assert "revoked" in _vars(pipeline, "keys", "list").stdout
    time.sleep(1.1)  # the gateway caches a key lookup for a second
    with pytest.raises(openai.AuthenticationError):
        ask(client(gateway, key), "gina", "hi")


def test_stored_vectors_belong_to_their_users(pipeline):
    """After all of the above, no user's store holds another's card (the partition)."""
    store = pipeline.store()
    for name in ("alice", "bob", "dave", "erin"):
        user = store.user(f"default/{name}")
        assert all(card.user_id == user.user_id for card in user.cards(include_superseded=True).values())
        assert isinstance(user.vector(256), UserVector)
