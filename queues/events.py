"""The pipeline's events: small msgspec structs, one tagged union on the ``type`` field.

Events carry ids and small fields only; every conversation payload (messages, stage
outputs, traces) lives in Redis under the session's keys and is read by the stage.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from vars_core.types import Stage

Lane = Literal["campaign", "live"]
LANES: tuple[Lane, ...] = ("campaign", "live")
Outcome = Literal["done", "failed", "cancelled"]

# Size caps keep a conversation from riding on an event by mistake.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
ShortText = Annotated[str, msgspec.Meta(max_length=256)]
Count = Annotated[int, msgspec.Meta(ge=0)]
MAX_EVENT_BYTES = 8192


class EventError(ValueError):
    """An event that cannot be encoded or decoded; the message names what is wrong."""


class _Event(msgspec.Struct, frozen=True, tag_field="type"):
    # Unknown fields are ignored, so a newer producer can add one during a rolling upgrade.
    session_id: Id


class SessionStart(_Event, tag="session.start"):
    campaign_id: ShortText = ""
    user_id: ShortText = ""
    method: ShortText = ""
    profile_id: ShortText = ""
    session_index: Count = 0
    lane: Lane = "campaign"


class StageTask(_Event, tag="stage.task"):
    turn: Count
    stage: Stage
    lane: Lane
    attempt: Count = 0
    # Unix time of publishing (workers.publish stamps it; 0.0 when unknown). The worker
    # that runs the task records start - sent_at as the event's queue wait: the hop's cost
    # under light load, the queueing delay under heavy load. A retry is sent with the
    # first send time, so its wait includes the backoff. Comparing it across hosts needs
    # their clocks in sync (NTP: about a millisecond).
    sent_at: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class StageDone(_Event, tag="stage.done"):
    turn: Count
    stage: Stage
    next_stage: Stage | None  # None: the session's turn loop is over
    lane: Lane = "campaign"


class SessionEnd(_Event, tag="session.end"):
    outcome: Outcome
    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""


Event = SessionStart | StageTask | StageDone | SessionEnd

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """JSON bytes of ``event``, with its ``type`` tag."""
    if not isinstance(event, (SessionStart, StageTask, StageDone, SessionEnd)):
        raise EventError(f"not an event: {type(event).__name__}")
    data = _encoder.encode(event)
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(
            f"{type(event).__name__} is {len(data)} bytes (max {MAX_EVENT_BYTES}): "
            "events carry ids; put payloads in the state store"
        )
    return data


def decode_event(data: bytes | str) -> Event:
    """Parse one event from JSON; raises EventError naming the bad field or input."""
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(f"event of {len(data)} bytes is over the {MAX_EVENT_BYTES}-byte cap")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise EventError(f"invalid event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EventError(f"event is not valid JSON: {exc}") from None


def as_event(obj: Any) -> Event:
    """An event from what a task receives: an event, its JSON, or the decoded dict
    (a kombu body decodes to plain dicts and lists)."""
    if isinstance(obj, (SessionStart, StageTask, StageDone, SessionEnd)):
        return obj
    if isinstance(obj, (bytes, str)):
        return decode_event(obj)
    try:
        return msgspec.convert(obj, Event)
    except msgspec.ValidationError as exc:
        raise EventError(f"invalid event: {exc}") from None
