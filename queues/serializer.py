"""The "msgspec" kombu serializer: JSON written and read by msgspec.

JSON rather than msgpack keeps messages readable with redis-cli while debugging, and
msgspec encodes event structs directly (with their ``type`` tag). A message body decodes
to plain dicts and lists; a task turns its event argument back into a struct with
``queues.events.as_event``.

Pickle is never accepted. The Celery app sets::

    task_serializer = result_serializer = "msgspec"
    accept_content = result_accept_content = ACCEPT_CONTENT  # ["msgspec", "json"]

so a pickled message is refused (kombu raises ContentDisallowed) before it is decoded.
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec
from kombu.serialization import register as kombu_register

NAME = "msgspec"
CONTENT_TYPE = "application/x-msgspec"
CONTENT_ENCODING = "utf-8"
ACCEPT_CONTENT: list[str] = [NAME, "json"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_registered = False
_lock = threading.Lock()


def dumps(obj: Any) -> str:
    """Encode a message body (events, ids, numbers, lists, dicts) as JSON text."""
    try:
        return _encoder.encode(obj).decode()
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"msgspec serializer cannot encode {type(obj).__name__}: {exc}") from None


def loads(data: bytes | str | memoryview) -> Any:
    """Decode a message body; raises ValueError naming the problem on junk."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"msgspec serializer: message body is not valid JSON: {exc}") from None


def register() -> None:
    """Register the serializer with kombu (safe to call any number of times)."""
    global _registered
    with _lock:
        if _registered:
            return
        kombu_register(
            NAME, dumps, loads, content_type=CONTENT_TYPE, content_encoding=CONTENT_ENCODING
        )
        _registered = True
