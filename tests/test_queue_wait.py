"""The queue wait: publish stamps each event's send time, the task records how long it waited."""

from __future__ import annotations

import time
from types import SimpleNamespace

import msgspec
import pytest

from queues.events import StageTask, decode_event, encode_event
from vars_core.store import StateStore
from workers import runtime, tasks
from workers.publish import publish


class _App:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send_task(self, name: str, **kwargs) -> None:
        self.sent.append({"name": name, **kwargs})


def test_publish_stamps_the_send_time_on_the_wire_only():
    app, event = _App(), StageTask("s1", 2, "judge", "campaign")
    before = time.time()
    publish(app, event)
    (sent,) = app.sent
    payload = sent["args"][0]
    assert before <= payload["sent_at"] <= time.time()
    assert event.sent_at == 0.0  # the caller's event is left as it was
    assert msgspec.convert(payload, StageTask) == msgspec.structs.replace(event, sent_at=payload["sent_at"])


def test_an_event_without_a_send_time_still_decodes():
    old = b'{"type":"stage.task","session_id":"s1","turn":1,"stage":"simulate","lane":"live"}'
    assert decode_event(old) == StageTask("s1", 1, "simulate", "live")
    stamped = StageTask("s1", 1, "simulate", "live", sent_at=12.5)
    assert decode_event(encode_event(stamped)).sent_at == 12.5
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"session_id": "s1", "turn": 1, "stage": "judge", "lane": "live", "sent_at": -1}, StageTask)


@pytest.fixture
def memory_store(monkeypatch):
    store = StateStore()
    monkeypatch.setattr(runtime, "store", lambda: store)
    return store


def _task() -> SimpleNamespace:
    request = SimpleNamespace(delivery_info={"routing_key": "vars.judge.campaign"}, hostname="judge@h")
    return SimpleNamespace(request=request)


def test_the_hop_records_the_wait_from_send_to_start(memory_store):
    event = StageTask("s1", 3, "judge", "campaign", sent_at=100.0)
    tasks._record_hop(_task(), event, started=100.0125)
    tasks._record_hop(_task(), StageTask("s1", 4, "judge", "campaign"), started=200.0)
    hops = [h.decode() for h in memory_store.backend.lrange(tasks.hops_key(memory_store, "s1"))]
    turn, stage, routing_key, worker, wait_ms = hops[0].split("|")
    assert (turn, stage, routing_key, worker) == ("3", "judge", "vars.judge.campaign", "judge@h")
    assert float(wait_ms) == pytest.approx(12.5, abs=1e-3)
    assert hops[1].endswith("|judge@h|")  # no send time (an event built by hand): no wait
