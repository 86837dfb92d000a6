"""Events, the msgspec kombu serializer, and the queue topology."""

from __future__ import annotations

import pickle

import pytest
from kombu import Connection, Exchange, Queue
from kombu.exceptions import ContentDisallowed, DecodeError, EncodeError
from kombu.serialization import dumps, loads, prepare_accept_content, registry

from queues import serializer
from queues.events import (
    EventError,
    SessionEnd,
    SessionStart,
    StageDone,
    StageTask,
    as_event,
    decode_event,
    encode_event,
)
from queues.topology import EXCHANGE, all_queues, queue_for, stage_queues
from vars_core.types import STAGES

serializer.register()
ACCEPT = prepare_accept_content(serializer.ACCEPT_CONTENT)  # names -> content types

EVENTS = [
    SessionStart(
        session_id="s1",
        campaign_id="c1",
        user_id="c1:rag:p1",
        method="rag",
        profile_id="p1",
        session_index=3,
    ),
    StageTask(session_id="s1", turn=2, stage="judge", lane="live", attempt=1),
    StageDone(session_id="s1", turn=2, stage="generate", next_stage="simulate"),
    StageDone(session_id="s1", turn=9, stage="simulate", next_stage=None),
    SessionEnd(session_id="s1", outcome="failed", reason="judge: backend timed out"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_round_trip(event: object) -> None:
    data = encode_event(event)  # type: ignore[arg-type]
    assert b'"type":' in data
    assert decode_event(data) == event
    assert decode_event(data.decode()) == event


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_round_trip_through_kombu_serializer(event: object) -> None:
    content_type, encoding, payload = dumps([[event], {}, {}], serializer="msgspec")
    assert content_type == "application/x-msgspec" and encoding == "utf-8"
    body = loads(payload, content_type, encoding, accept=ACCEPT)
    assert as_event(body[0][0]) == event


def test_event_through_a_kombu_queue() -> None:
    exchange = Exchange("t", type="direct")
    queue = Queue("t.q", exchange, routing_key="t.q")
    with Connection("memory://") as conn:
        producer = conn.Producer(serializer="msgspec")
        producer.publish(
            {"event": EVENTS[1]}, exchange=exchange, routing_key="t.q", declare=[queue]
        )
        message = queue(conn.default_channel).get(accept=ACCEPT)
        assert message is not None
        assert message.content_type == "application/x-msgspec"
        assert as_event(message.decode()["event"]) == EVENTS[1]


def test_register_is_idempotent() -> None:
    serializer.register()
    serializer.register()
    assert registry.name_to_type["msgspec"] == "application/x-msgspec"


def test_pickle_is_refused() -> None:
    assert "application/x-python-serialize" not in ACCEPT
    payload = pickle.dumps([[1], {}, {}])
    with pytest.raises(ContentDisallowed):
        loads(payload, "application/x-python-serialize", "binary", accept=ACCEPT)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x03junk", "not valid JSON"),
        (b'{"type": "stage.task"', "not valid JSON"),
        (b"[1, 2]", "invalid event"),
        (b'{"type": "stage.task", "session_id": "s"}', "missing required field `turn`"),
        (b'{"type": "party", "session_id": "s"}', "Invalid value 'party'"),
        (b'{"session_id": "s"}', "missing required field `type`"),
        (
            b'{"type": "stage.task", "session_id": "s", "turn": 1, "stage": "dance", '
            b'"lane": "live"}',
            "`$.stage`",
        ),
        (
            b'{"type": "stage.task", "session_id": "s", "turn": -1, "stage": "judge", '
            b'"lane": "live"}',
            "`$.turn`",
        ),
        (b'{"type": "session.end", "session_id": "", "outcome": "done"}', "`$.session_id`"),
        (b'{"type": "x", "session_id": "' + b"a" * 9000 + b'"}', "byte cap"),
    ],
)
def test_decoding_bad_input_names_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(EventError) as info:
        decode_event(data)
    assert message in str(info.value)


def test_junk_through_kombu_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        loads(b"{nope", "application/x-msgspec", "utf-8", accept=ACCEPT)


def test_unencodable_body_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="msgspec serializer cannot encode"):
        dumps([[object()], {}, {}], serializer="msgspec")


def test_as_event_rejects_wrong_shapes() -> None:
    with pytest.raises(EventError, match="invalid event"):
        as_event({"type": "stage.done", "session_id": "s"})
    with pytest.raises(EventError, match="invalid event"):
        as_event(42)


def test_oversized_event_is_refused_on_encode() -> None:
    with pytest.raises(EventError, match="put payloads in the state store"):
        encode_event(SessionEnd(session_id="s", outcome="failed", reason="x" * 10_000))
    with pytest.raises(EventError, match="not an event"):
        encode_event({"type": "stage.task"})  # type: ignore[arg-type]


def test_every_stage_has_a_campaign_and_a_live_queue() -> None:
    names = {q.name for q in all_queues()}
    assert len(names) == len(all_queues()) == 2 * len(STAGES)
    for stage in STAGES:
        assert queue_for(stage, "campaign") == f"vars.{stage}"
        assert queue_for(stage, "live") == f"vars.{stage}.live"
        live, campaign = stage_queues(stage)
        assert (live.name, campaign.name) == (f"vars.{stage}.live", f"vars.{stage}")
        for q in (live, campaign):
            assert q.name in names
            assert q.routing_key == q.name and q.exchange == EXCHANGE


def test_unknown_stage_or_lane_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown stage 'dance'"):
        queue_for("dance", "live")
    with pytest.raises(ValueError, match="unknown lane 'batch'"):
        queue_for("judge", "batch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown stage"):
        stage_queues("dance")
