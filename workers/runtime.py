"""Per-process state of a worker: one Engine (models load once) and one store client."""

from __future__ import annotations

import os
import threading

from vars_core.config import config_from_env
from vars_core.engine import Engine
from vars_core.store import StateStore
from vars_core.store.connect import connect
from vars_core.store.redis_backend import RedisBackend

_lock = threading.Lock()
_engine: Engine | None = None
_store: StateStore | None = None


def engine() -> Engine:
    global _engine
    with _lock:
        if _engine is None:
            _engine = Engine(config_from_env())
        return _engine


def store() -> StateStore:
    global _store
    with _lock:
        if _store is None:
            url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
            _store = StateStore(RedisBackend(connect(url)))
        return _store


def reset() -> None:
    """Forget the process's clients (after a fork, or in tests)."""
    global _engine, _store
    with _lock:
        _engine, _store = None, None
