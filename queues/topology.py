"""Exchanges, queues and routing keys: one queue per stage and lane.

Every stage has a campaign queue ("vars.simulate") and a live one ("vars.simulate.live").
A worker consumes both, live first, so a large campaign never delays a live user. The
Redis transport only honours that order with ``broker_transport_options =
{"queue_order_strategy": "priority"}`` (its default round-robin rotates the queues), so the
Celery app sets it (see ``TRANSPORT_OPTIONS``).
"""

from __future__ import annotations

from kombu import Exchange, Queue

from queues.events import LANES, Lane
from vars_core.types import STAGES

PREFIX = "vars"

TRANSPORT_OPTIONS: dict[str, object] = {"queue_order_strategy": "priority"}

# One direct exchange: the routing key is the queue name.
EXCHANGE = Exchange(PREFIX, type="direct", durable=True)


def _check(stage: str, lane: str = "campaign") -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}; lanes are {', '.join(LANES)}")


def queue_for(stage: str, lane: Lane = "campaign") -> str:
    """The queue name (also its routing key) of ``stage`` in ``lane``."""
    _check(stage, lane)
    name = f"{PREFIX}.{stage}"
    return f"{name}.live" if lane == "live" else name


def routing_key(stage: str, lane: Lane = "campaign") -> str:
    return queue_for(stage, lane)


def _queue(stage: str, lane: Lane) -> Queue:
    name = queue_for(stage, lane)
    return Queue(name, EXCHANGE, routing_key=name, durable=True)


def stage_queues(stage: str) -> list[Queue]:
    """The queues a worker of ``stage`` consumes, live first."""
    _check(stage)
    return [_queue(stage, "live"), _queue(stage, "campaign")]


def all_queues() -> list[Queue]:
    """Every stage's queues, in pipeline order, live before campaign."""
    return [q for stage in STAGES for q in stage_queues(stage)]
