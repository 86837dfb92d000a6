"""`vars scheduler`: the pipeline's scheduler side as one long-running process.

It serves the metrics only Redis knows (queue depths, the dead-letter length, campaign
progress and lanes in flight), read at scrape time by ``RedisCollector``, and runs the
sweeper (``scheduler.resume.sweep_once``) every ``--sweep-interval`` seconds. Workers
export what they count themselves (workers/metrics.py).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from queues.topology import all_queues
from scheduler.resume import sweep_once
from vars_core.campaign import (
    CampaignPlan,
    cancelled_at,
    finished_at,
    lanes,
    load_plan,
    progress,
    registered_campaigns,
)
from vars_core.runner import lane_user_id, session_id_for
from vars_core.stages.lifecycle import START_TURN
from vars_core.store import StateStore
from vars_core.types import STAGES

log = logging.getLogger("vars.scheduler")

# kombu's Redis transport keeps a queue as a list named after it, plus one list per
# priority step other than 0 (name + this separator + step) when priorities are used.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
UNACKED_KEY = "unacked"  # kombu's hash of messages delivered and not yet acknowledged
# Ended campaigns stay on the dashboard this long after they finished or were cancelled.
DEFAULT_RETENTION_S = 86400.0


def deadletter_key(store: StateStore) -> str:
    return f"{store.keys.ns}:deadletter"  # as workers/tasks.py writes it


class LaneTracker:
    """Lanes in flight per campaign: lanes whose current session started and has not
    ended. Remembers each lane's current session index between scrapes, so a scrape
    costs two EXISTS per lane (pipelined), not a walk of the lane's history. A session
    `vars campaign retry` runs again behind its lane's later ones is not seen."""

    def __init__(self) -> None:
        self._current: dict[str, dict[str, int]] = {}

    def inflight(self, store: StateStore, plan: CampaignPlan) -> int:
        cursor = self._current.setdefault(plan.campaign_id, {})
        users = [lane_user_id(plan.campaign_id, m, p) for p, m in lanes(plan)]
        pending = {user: cursor.get(user, 1) for user in users}
        running = 0
        while pending:
            states = self._read(store, pending)
            advanced: dict[str, int] = {}
            for (user, index), (started, ended) in zip(pending.items(), states, strict=True):
                if started and ended and index < plan.sessions:
                    advanced[user] = index + 1
                    continue
                cursor[user] = index
                running += bool(started and not ended)
            pending = advanced
        return running

    def forget(self, keep: set[str]) -> None:
        for campaign_id in set(self._current) - keep:
            del self._current[campaign_id]

    @staticmethod
    def _read(store: StateStore, pending: dict[str, int]) -> list[tuple[bool, bool]]:
        keys = []
        for user, index in pending.items():
            sid = session_id_for(user, index)
            keys += [store.keys.marker(sid, START_TURN, "start"), store.keys.marker(sid, START_TURN, "end")]
        flags = store.backend.exists_many(keys)  # pipelined on Redis
        return list(zip(flags[::2], flags[1::2], strict=True))


class RedisCollector(Collector):
    """Gauges read from Redis at scrape time."""

    def __init__(self, store: StateStore, retention_s: float = DEFAULT_RETENTION_S, clock=time.time) -> None:  # noqa: ANN001
        self.store = store
        self.retention_s = retention_s
        self.clock = clock
        self.lanes = LaneTracker()
        self._lock = threading.Lock()  # one scrape at a time (the tracker is shared)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("vars_redis_up", "1 when the scheduler read Redis at this scrape")
        with self._lock:
            try:
                families = list(self._queues()) + list(self._campaigns())
            except Exception as exc:  # Redis down or restarting: say so, serve the rest
                log.warning("metrics: cannot read Redis: %s: %s", type(exc).__name__, exc)
                up.add_metric([], 0)
                yield up
                return
        up.add_metric([], 1)
        yield up
        yield from families

    def _queues(self) -> Iterator[GaugeMetricFamily]:
        backend = self.store.backend
        depth = GaugeMetricFamily(
            "vars_queue_depth", "Messages waiting in a stage queue", labels=["queue", "stage", "lane"]
        )
        for queue in all_queues():
            names = [queue.name, *(f"{queue.name}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS)]
            stage, lane = queue_labels(queue.name)
            depth.add_metric([queue.name, stage, lane], sum(backend.llen(name) for name in names))
        yield depth
        unacked = GaugeMetricFamily("vars_unacked_messages", "Messages delivered to workers, not yet acknowledged")
        unacked.add_metric([], hash_length(backend, UNACKED_KEY))
        yield unacked
        dead = GaugeMetricFamily("vars_deadletter_length", "Entries in the dead-letter list")
        dead.add_metric([], backend.llen(deadletter_key(self.store)))
        yield dead

    def _campaigns(self) -> Iterator[GaugeMetricFamily]:
        sessions = GaugeMetricFamily(
            "vars_campaign_sessions", "A campaign's sessions by status (done, failed, total)", labels=["campaign", "status"]
        )
        state = GaugeMetricFamily(
            "vars_campaign_state", "1 for a campaign's current state", labels=["campaign", "state"]
        )
        inflight = GaugeMetricFamily(
            "vars_inflight_lanes", "Lanes whose current session started and has not ended", labels=["campaign"]
        )
        now, shown = self.clock(), set()
        for campaign_id, _ in registered_campaigns(self.store):
            try:
                plan = load_plan(self.store, campaign_id)
            except KeyError:  # its keys were deleted
                continue
            done, failed = progress(self.store, campaign_id)
            current, ended = campaign_state(self.store, plan, done + failed)
            if ended is not None and now - ended > self.retention_s:
                continue
            shown.add(campaign_id)
            for status, value in (("done", done), ("failed", failed), ("total", plan.total_sessions)):
                sessions.add_metric([campaign_id, status], value)
            for name in ("running", "finished", "cancelled"):
                state.add_metric([campaign_id, name], float(name == current))
            running = self.lanes.inflight(self.store, plan) if current == "running" else 0
            inflight.add_metric([campaign_id], running)
        self.lanes.forget(shown)
        yield from (sessions, state, inflight)


def hash_length(backend: Any, key: str) -> int:  # noqa: ANN401
    """HLEN where the backend is Redis (the unacked hash holds whole messages: never read
    it all); the memory backend has no such hash worth avoiding."""
    client = getattr(backend, "client", None)
    return int(client.hlen(key)) if client is not None else len(backend.hgetall(key))


def queue_labels(queue: str) -> tuple[str, str]:
    """("simulate", "live") for "vars.simulate.live"; ("simulate", "campaign") for "vars.simulate"."""
    parts = queue.split(".")
    stage = parts[1] if len(parts) > 1 and parts[1] in STAGES else "unknown"
    return stage, "live" if parts[-1] == "live" else "campaign"


def campaign_state(store: StateStore, plan: CampaignPlan, finished: int) -> tuple[str, float | None]:
    """(running | finished | cancelled, when it ended or None)."""
    if finished >= plan.total_sessions:
        return "finished", finished_at(store, plan.campaign_id)
    stamp = cancelled_at(store, plan.campaign_id)
    return ("cancelled", stamp) if stamp is not None else ("running", None)


class Sweeper:
    """The sweeper loop's body, with its own counters."""

    def __init__(self, engine: Any, store: StateStore, publish: Callable, stalled_after: float, registry: CollectorRegistry) -> None:  # noqa: ANN401
        self.engine, self.store, self.publish = engine, store, publish
        self.stalled_after = stalled_after
        self.runs = Counter("vars_sweeps", "Sweeper passes, by result", ["result"], registry=registry)
        self.republished = Counter(
            "vars_sweep_republished", "Events the sweeper republished on stalled lanes", registry=registry
        )

    def once(self) -> int:
        try:
            reports = sweep_once(self.engine, self.store, self.publish, self.stalled_after)
        except Exception as exc:  # e.g. Redis restarting: try again next round
            self.runs.labels("error").inc()
            log.warning("sweep failed: %s: %s", type(exc).__name__, exc)
            return 0
        self.runs.labels("ok").inc()
        events = 0
        for report in reports:
            events += len(report.events)
            log.info(
                "campaign %s: republished %d event(s) on %d stalled lane(s)",
                report.campaign_id, len(report.events), report.lanes_resumed,
            )
        self.republished.inc(events)
        return events


def build_registry(store: StateStore, retention_s: float = DEFAULT_RETENTION_S) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RedisCollector(store, retention_s))
    return registry


def run(
    engine: Any,  # noqa: ANN401
    store: StateStore,
    publish: Callable,
    *,
    metrics_port: int,
    metrics_addr: str,
    sweep_interval: float,
    stalled_after: float,
    retention_s: float = DEFAULT_RETENTION_S,
    stop: threading.Event | None = None,
) -> None:
    """Serve metrics and sweep until ``stop`` is set (SIGTERM/SIGINT set it)."""
    stop = stop or threading.Event()
    registry = build_registry(store, retention_s)
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_addr, registry=registry)
        log.info("metrics on http://%s:%d/metrics", metrics_addr, metrics_port)
    sweeper = Sweeper(engine, store, publish, stalled_after, registry) if sweep_interval > 0 else None
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        if sweeper is not None:
            sweeper.once()
        stop.wait(sweep_interval if sweeper is not None else 3600)
