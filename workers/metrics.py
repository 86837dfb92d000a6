"""Prometheus metrics of the stage workers (DESIGN §8; the list is in docs/metrics.md).

Effects are counted where their idempotent commit was made, never where a task ran:
delivery is at-least-once, and a duplicate task finds its commit made and counts nothing.
``CountingStore`` is the worker's StateStore with that hook. Stage timing and retries
come from Celery signals; failures from one call per failure branch of the task wrapper.

Exposition: with VARS_METRICS_PORT set, a worker's main process serves /metrics on that
port (VARS_METRICS_ADDR, default 0.0.0.0). Values live in prometheus_client's
multiprocess files whatever the pool, so a prefork pool's children count into files the
parent serves. Each worker makes a private directory for them (under
PROMETHEUS_MULTIPROC_DIR if set, else the system temp dir): two workers on one host never
add up each other's files, and a restarted worker never reads a dead one's.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
import time

PORT_ENV = "VARS_METRICS_PORT"
ADDR_ENV = "VARS_METRICS_ADDR"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _use_private_multiproc_dir() -> None:
    """Point prometheus_client at a fresh directory of this process tree. Must run before
    prometheus_client is imported (it picks its value store at import)."""
    if not os.environ.get(PORT_ENV) or "prometheus_client" in sys.modules:
        return
    base = os.environ.get(MULTIPROC_ENV) or None
    if base:
        os.makedirs(base, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f"vars-metrics-{os.getpid()}-", dir=base)
    os.environ[MULTIPROC_ENV] = path
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))


_use_private_multiproc_dir()

from celery.signals import (  # noqa: E402
    task_postrun,
    task_prerun,
    task_retry,
    worker_init,
    worker_process_shutdown,
)
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server  # noqa: E402

from vars_core.llm import api as llm_api  # noqa: E402
from vars_core.stages.judge import NO_REACTION  # noqa: E402
from vars_core.stages.lifecycle import START_TURN  # noqa: E402
from vars_core.store import StateStore  # noqa: E402
from vars_core.store.backend import Op  # noqa: E402
from vars_core.tokens import count_tokens  # noqa: E402
from vars_core.types import GenerateResult, JudgeResult, SessionRecord, SimulatorTurn, Usage  # noqa: E402

log = logging.getLogger("vars.metrics")

# Label values are bounded: stages, methods, reward labels and roles are fixed sets;
# session indexes are capped; a failure reason is a code-defined name, never a message.
MAX_SESSION_INDEX = 20
MAX_REASONS = 64
LIVE = "live"
# LLM roles whose tokens are counted per call (their stage outputs store no usage). The
# agent's tokens are counted from the reply its generate commit stored.
CALL_COUNTED_ROLES = frozenset({"simulator", "judge", "extractor", "answer_judge"})

SESSIONS = Counter(
    "vars_sessions_completed", "Sessions ended (their end committed)", ["method", "campaign", "outcome"]
)
SESSIONS_BY_INDEX = Counter(
    "vars_sessions_by_index", "Sessions ended, by their index in their lane", ["method", "session_index"]
)
TURNS = Counter("vars_turns", "Agent replies committed (one per turn)", ["method", "lane"])
STAGE_SECONDS = Histogram(
    "vars_stage_seconds",
    "Wall time of one stage task run",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
TOKENS = Counter("vars_llm_tokens", "LLM tokens by role and kind (prompt, completion)", ["role", "kind"])
REWARDS = Counter("vars_reward", "Judged user reactions, by reward label", ["label"])
ENFORCEMENTS = Counter(
    "vars_enforcements", "Preferences the user restated, by method and session index", ["method", "session_index"]
)
FAILURES = Counter("vars_stage_failures", "Stage events that failed for good", ["stage", "reason"])
RETRIES = Counter("vars_stage_retries", "Stage task runs that failed and were retried", ["stage", "reason"])

_reasons: set[str] = set()
_reasons_lock = threading.Lock()


def session_index_label(index: int) -> str:
    """"1".."20", "21+"; "0" for sessions outside a lane (live)."""
    if index <= 0:
        return "0"
    return str(index) if index <= MAX_SESSION_INDEX else f"{MAX_SESSION_INDEX + 1}+"


def reason_label(reason: BaseException | str) -> str:
    """A failure reason as a bounded label: an exception's class name, or a fixed word.
    Past MAX_REASONS distinct names, "other"."""
    name = type(reason).__name__ if isinstance(reason, BaseException) else str(reason)
    with _reasons_lock:
        if name in _reasons or len(_reasons) < MAX_REASONS:
            _reasons.add(name)
            return name
    return "other"


def outcome_label(record: SessionRecord) -> str:
    if record.status == "failed":
        return "failed"
    if record.success:
        return "success"
    return "timeout" if record.timeout else "unsolved"


def stage_of(task_name: str | None) -> str | None:
    """The stage of a stage task ("vars.simulate" -> "simulate"); None for other tasks."""
    if not task_name or not task_name.startswith("vars."):
        return None
    return task_name[len("vars.") :]


# ----------------------------------------------------------------------------- commits


def count_commit(store: StateStore, session_id: str, turn: int, stage: str) -> None:
    """Count the effects of one commit this process made (reads back what it wrote)."""
    if stage == "simulate":
        sim = store.stage_output(session_id, turn, "simulate", SimulatorTurn)
        if sim is not None and sim.message:
            TOKENS.labels("user", "completion").inc(count_tokens(sim.message))
    elif stage == "judge":
        judged = store.stage_output(session_id, turn, "judge", JudgeResult)
        if judged is not None and judged != NO_REACTION:  # a session out of turns: nothing judged
            REWARDS.labels(judged.label).inc()
    elif stage == "generate":
        generated = store.stage_output(session_id, turn, "generate", GenerateResult)
        if generated is not None:
            session = store.session(session_id)
            TURNS.labels(session.method, session.lane).inc()
            count_usage("agent", generated.reply.usage)
    elif stage == "end" and turn == START_TURN:
        record = store.session_record(session_id)
        if record is not None:
            count_session(record)


def count_session(record: SessionRecord) -> None:
    index = session_index_label(record.session_index)
    SESSIONS.labels(record.method, record.campaign_id or LIVE, outcome_label(record)).inc()
    SESSIONS_BY_INDEX.labels(record.method, index).inc()
    # inc(0) too: a (method, index) with no restatement still has its series (rate 0).
    ENFORCEMENTS.labels(record.method, index).inc(record.enforcements)


def count_usage(role: str, usage: Usage) -> None:
    TOKENS.labels(role, "prompt").inc(usage.prompt_tokens)
    TOKENS.labels(role, "completion").inc(usage.completion_tokens)


def _observe_commit(store: StateStore, session_id: str, turn: int, stage: str) -> None:
    try:
        count_commit(store, session_id, turn, stage)
    except Exception:  # a metric must never fail a stage whose commit is made
        log.exception("could not count the %s commit of %s turn %d", stage, session_id, turn)


class CountingStore(StateStore):
    """The worker's StateStore: a commit made here (not one found already made) is
    counted once, after it is written."""

    def commit_stage(self, session_id: str, turn: int, stage: str, ops: list[Op]) -> bool:
        made = super().commit_stage(session_id, turn, stage, ops)
        if made:
            _observe_commit(self, session_id, turn, stage)
        return made

    def transact_stage(self, session_id: str, turn: int, stage: str, watch, build) -> bool:  # noqa: ANN001
        made = super().transact_stage(session_id, turn, stage, watch, build)
        if made:
            _observe_commit(self, session_id, turn, stage)
        return made


def _count_llm_call(name: str, usage: Usage) -> None:
    if name in CALL_COUNTED_ROLES:
        count_usage(name, usage)


if _count_llm_call not in llm_api.usage_observers:
    llm_api.usage_observers.append(_count_llm_call)


# ----------------------------------------------------------------------------- failures


def stage_failed(stage: str, reason: BaseException | str) -> None:
    """One stage event failed for good (dead-lettered), with a bounded reason."""
    FAILURES.labels(stage, reason_label(reason)).inc()


# ----------------------------------------------------------------------------- signals

_started: dict[str, float] = {}


@task_prerun.connect
def _task_started(task_id: str | None = None, task=None, **_: object) -> None:  # noqa: ANN001
    if task_id and stage_of(getattr(task, "name", None)):
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _task_finished(task_id: str | None = None, task=None, **_: object) -> None:  # noqa: ANN001
    began = _started.pop(task_id, None) if task_id else None
    stage = stage_of(getattr(task, "name", None))
    if began is not None and stage:
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - began)


@task_retry.connect
def _task_retried(sender=None, reason=None, **_: object) -> None:  # noqa: ANN001
    stage = stage_of(getattr(sender, "name", None))
    if stage:
        RETRIES.labels(stage, reason_label(reason if isinstance(reason, BaseException) else "retry")).inc()


@worker_init.connect
def _serve_on_worker_start(**_: object) -> None:
    serve()


@worker_process_shutdown.connect
def _child_exits(**_: object) -> None:
    if os.environ.get(MULTIPROC_ENV) and os.environ.get(PORT_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


# ----------------------------------------------------------------------------- exposition

_server_started = False


def serve() -> int | None:
    """Start the /metrics server once per process when VARS_METRICS_PORT is set; return
    its port (None when not serving)."""
    global _server_started
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw or _server_started:
        return None
    port, addr = int(raw), os.environ.get(ADDR_ENV, "0.0.0.0")
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:  # prometheus_client was imported before the directory could be set
        from prometheus_client import REGISTRY

        registry = REGISTRY
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        # The worker still works; the missing target shows as down in Prometheus.
        log.error("cannot serve metrics on %s:%d: %s", addr, port, exc)
        return None
    _server_started = True
    log.info("metrics on http://%s:%d/metrics", addr, port)
    return port
