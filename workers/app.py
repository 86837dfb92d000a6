"""The Celery app: Redis as broker, msgspec/JSON only on the wire, at-least-once delivery.

The broker URL comes from REDIS_URL (``vars worker`` resolves the embedded Redis and sets
it before this module is imported). Pickle is never accepted.
"""

from __future__ import annotations

import os

from celery import Celery

from queues import serializer
from queues.topology import all_queues

# A task can run for minutes against a slow LLM server; a message not acked within the
# visibility timeout is delivered again, so keep it well above the longest task
# (Celery's Redis docs: it must exceed the longest ETA/countdown too).
VISIBILITY_TIMEOUT_S = 3600


def broker_url(redis_url: str) -> str:
    """kombu spells a unix-socket Redis as redis+socket://; redis-py as unix://."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://") :]
    return redis_url


def make_app(redis_url: str | None = None) -> Celery:
    serializer.register()
    url = broker_url(redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    app = Celery("vars", broker=url, set_as_current=True)
    app.conf.update(
        task_serializer=serializer.NAME,
        accept_content=[serializer.NAME, "json"],
        result_accept_content=[serializer.NAME, "json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=all_queues(),
        task_create_missing_queues=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            # BRPOP the queues in the order given (live before campaign), never rotated.
            "queue_order_strategy": "priority",
        },
        worker_hijack_root_logger=False,
        # Celery's consumer, dead-lettering every message it refuses (workers/consumer.py).
        worker_consumer="workers.consumer:DeadLetteringConsumer",
        worker_send_task_events=False,
    )
    return app


app = make_app()

import workers.control  # noqa: E402,F401  (registers the `vars_worker` remote-control command)
import workers.tasks  # noqa: E402,F401  (registers the stage tasks on the app)
