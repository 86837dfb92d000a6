"""The worker's message consumer: Celery's, with every message it refuses dead-lettered.

Celery refuses a message before any task runs when its body cannot be decoded, its
content type is not accepted (``accept_content`` is msgspec and JSON: pickle never is),
or it names no task or an unknown one. Celery logs it and acknowledges or rejects it,
which drops it; here it also goes onto the dead-letter list with the reason, so nothing
is dropped silently (DESIGN §9). The body is kept as a bounded excerpt of its raw bytes:
a refused body is never decoded.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from celery.worker.consumer import Consumer

from vars_core.store.backend import Op
from workers import metrics, runtime
from workers.tasks import deadletter_key

log = logging.getLogger("vars.worker")

BODY_EXCERPT_BYTES = 512


def refused(message: Any, reason: str) -> None:
    """Dead-letter a message the consumer refused; a failure to do so is logged, never
    raised (the consumer must go on)."""
    try:
        delivery = message.delivery_info or {}
        headers = message.headers if isinstance(message.headers, dict) else {}
        body = message.body
        raw = body if isinstance(body, (bytes, bytearray)) else str(body).encode("utf-8", "replace")
        queue = str(delivery.get("routing_key") or "")
        entry = {
            "queue": queue,
            "task": str(headers.get("task") or ""),
            "id": str(headers.get("id") or ""),
            "content_type": str(message.content_type or ""),
            "body": raw[:BODY_EXCERPT_BYTES].decode("utf-8", "replace"),
            "body_bytes": len(raw),
        }
        parts = queue.split(".")  # vars.<stage> or vars.<stage>.live
        metrics.stage_failed(parts[1] if len(parts) > 1 and parts[0] == "vars" else "unknown", "refused_message")
        store = runtime.store()
        data = msgspec.json.encode({"event": entry, "reason": reason})
        store.backend.apply([Op("rpush", deadletter_key(store), value=data)])
    except Exception:
        log.exception("could not dead-letter a refused message (%s)", reason)


class DeadLetteringConsumer(Consumer):
    """Celery's consumer; each refusal also dead-letters the message."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        refused(message, f"message body cannot be decoded: {exc}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        refused(message, "not a task message: no task name in its headers or body")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        refused(message, f"unknown task {headers.get('task')!r}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        refused(message, f"refused message: {exc}")
        super().on_invalid_task(body, message, exc)
