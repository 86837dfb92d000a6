"""Per-process state of a worker: one Engine (models load once), one store client, and
the engines of campaigns that pin their own backends, derived from the first."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

from vars_core.campaign_settings import campaign_config
from vars_core.config import config_from_env
from vars_core.engine import Engine
from vars_core.store import StateStore
from vars_core.store.connect import connect
from vars_core.store.redis_backend import RedisBackend
from workers.metrics import CountingStore

_lock = threading.Lock()
_engine: Engine | None = None
_store: StateStore | None = None
# campaign id -> its engine; bounded (a worker outlives many campaigns).
_campaign_engines: OrderedDict[str, Engine] = OrderedDict()
MAX_CAMPAIGN_ENGINES = 32


def engine() -> Engine:
    global _engine
    with _lock:
        if _engine is None:
            _engine = Engine(config_from_env())
        return _engine


def campaign_engine(campaign_id: str, reward: str | None, backends: dict[str, dict[str, Any]]) -> Engine:
    """The engine for a campaign's sessions: the process engine when the campaign pins
    nothing, else one derived from it with the pins applied (raises
    CampaignSettingsError, naming the spec field, when they cannot run)."""
    base = engine()
    if reward is None and not backends:
        return base
    with _lock:
        found = _campaign_engines.get(campaign_id)
        if found is not None:
            _campaign_engines.move_to_end(campaign_id)
            return found
    derived = base.derive(campaign_config(base.config, reward, backends))
    with _lock:
        derived = _campaign_engines.setdefault(campaign_id, derived)
        while len(_campaign_engines) > MAX_CAMPAIGN_ENGINES:
            _campaign_engines.popitem(last=False)
    return derived


def store() -> StateStore:
    global _store
    with _lock:
        if _store is None:
            url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
            # Counts each commit it makes, once (workers/metrics.py).
            _store = CountingStore(RedisBackend(connect(url)))
        return _store


def reset() -> None:
    """Forget the process's clients (after a fork, or in tests)."""
    global _engine, _store
    with _lock:
        _engine, _store = None, None
        _campaign_engines.clear()


def preload(stage: str) -> None:
    """Load the in-process models ``stage`` uses into this process's engine, now."""
    from workers.pool import stage_models

    built = engine()
    for model in stage_models(stage, built.config):
        if model.role == "reranker":
            built.reranker_for("live")  # an in-process kind is named: the same for every lane
        elif model.in_process:
            getattr(built, model.role)
