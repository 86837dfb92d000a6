"""Publishing the next event of a session onto its stage's queue (live or campaign)."""

from __future__ import annotations

import time

import msgspec
from celery import Celery

from queues import serializer
from queues.events import StageTask
from queues.topology import queue_for


def task_name(stage: str) -> str:
    return f"vars.{stage}"


def publish(app: Celery, event: StageTask, producer=None) -> None:
    """Send ``event`` to its stage's queue, stamped with the time it was sent."""
    payload = msgspec.to_builtins(event)
    payload["sent_at"] = time.time()  # the queue wait's start (StageTask.sent_at)
    app.send_task(
        task_name(event.stage),
        args=[payload],
        queue=queue_for(event.stage, event.lane),
        serializer=serializer.NAME,
        producer=producer,
    )


def publish_many(app: Celery, events: list[StageTask], batch: int = 500) -> None:
    """Enqueue in batches over one pooled producer connection."""
    for start in range(0, len(events), batch):
        with app.producer_or_acquire() as producer:
            for event in events[start : start + batch]:
                publish(app, event, producer=producer)
