"""One Celery task per stage. Each only decodes its event, calls ``run_stage`` (load ->
vars_core function -> idempotent commit) and publishes the next event. Retries with
backoff and the dead-letter path are written once, here, around every stage."""

from __future__ import annotations

import logging
import os
import random
import time

import msgspec
from celery import Task

from queues.events import StageTask
from vars_core.campaign import (
    campaign_of_session,
    is_cancelled,
    load_plan,
    next_in_lane,
    record_failure,
)
from vars_core.campaign_settings import CampaignSettingsError
from vars_core.engine import Engine
from vars_core.routing import END, Step
from vars_core.stages import StrayEvent, run_stage
from vars_core.stages.context import StageContext
from vars_core.stages.lifecycle import START_TURN, end_session
from vars_core.store import StateStore
from vars_core.store.backend import Op
from vars_core.store.state import UnknownSession
from vars_core.types import STAGES
from workers import metrics, runtime
from workers.app import app
from workers.publish import publish

log = logging.getLogger("vars.worker")

MAX_RETRIES = 4
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))


def deadletter_key(store: StateStore) -> str:
    return f"{store.keys.ns}:deadletter"


# Test-only fault injection. Off unless the worker process starts with VARS_TEST_FAULTS=1;
# then, at the start of each stage task, the key ``{ns}:test:fault`` (if set) is read as
# ``stage|turn|needle`` and a task of that stage and turn whose session id contains
# ``needle`` raises, going through the normal retry and failure path. Deleting the key
# removes the fault without restarting the workers. Used by tests/test_campaign_control.py.
FAULTS_ENABLED = os.environ.get("VARS_TEST_FAULTS") == "1"


def fault_key(store: StateStore) -> str:
    return f"{store.keys.ns}:test:fault"


def _injected_fault(store: StateStore, event: StageTask) -> None:
    spec = store.backend.get(fault_key(store))
    if not spec:
        return
    stage, turn, needle = spec.decode().split("|", 2)
    if event.stage == stage and event.turn == int(turn) and needle in event.session_id:
        raise RuntimeError(f"injected test fault at {stage} turn {turn}")


# Campaign engine settings (spec `reward` and `[backends.<role>]`, stored in the plan) are
# applied per campaign: its sessions run on an engine derived from this worker's, with its
# pins over the worker's values (runtime.campaign_engine). Pins that cannot run (e.g.
# reward = "llm" with no OpenAI-compatible judge anywhere) fail the session at once, with
# no retries (not transient), and a reason naming the spec field.
_pins: dict[str, tuple[str | None, dict[str, dict]]] = {}


def _campaign_pins(store: StateStore, campaign_id: str) -> tuple[str | None, dict[str, dict]]:
    pins = _pins.get(campaign_id)
    if pins is None:
        try:
            plan = load_plan(store, campaign_id)
        except KeyError:  # a campaign session without a stored plan (in-process runs)
            return None, {}
        pins = (plan.reward, plan.backends)
        if len(_pins) >= 256:
            _pins.pop(next(iter(_pins)))
        _pins[campaign_id] = pins
    return pins


def engine_for(store: StateStore, session_id: str, lane: str) -> Engine:
    """The engine that runs this session's stages: its campaign's, or the process's."""
    if lane != "campaign":
        return runtime.engine()
    campaign_id = campaign_of_session(session_id)
    reward, backends = _campaign_pins(store, campaign_id)
    return runtime.campaign_engine(campaign_id, reward, backends)


def _already_done(store: StateStore, session_id: str, step: Step) -> bool:
    """Was the next step already committed? Then its event was published and ran; a
    duplicate delivery must not start a second chain of events behind it."""
    turn = START_TURN if step.stage == END else step.turn
    return store.is_committed(session_id, turn, step.stage)


def advance(event: StageTask, step: Step | None) -> None:
    """Publish what follows ``event``; at a session end, close it and start the lane's next."""
    store = runtime.store()
    if step is None:
        return
    if step.stage != END:
        if not _already_done(store, event.session_id, step):
            publish(app, StageTask(event.session_id, step.turn, step.stage, event.lane))
        return
    finish(event.session_id, event.lane)


def finish(session_id: str, lane: str, failure: str = "") -> None:
    store = runtime.store()
    try:
        engine = engine_for(store, session_id, lane)
    except CampaignSettingsError:  # closing a session its settings failed: the base will do
        engine = runtime.engine()
    session = store.session(session_id)
    end_session(StageContext(engine, store, session, START_TURN), failure=failure)
    following = next_in_lane(engine, store, session)
    if following is not None and not store.is_committed(following.session_id, 1, "simulate"):
        publish(app, StageTask(following.session_id, 1, "simulate", lane))


def execute(task: Task, stage: str, payload: dict) -> None:
    started = time.time()  # the end of the event's queue wait (StageTask.sent_at)
    try:
        event = msgspec.convert(payload, StageTask)
    except msgspec.ValidationError as exc:
        # Junk on the queue: retrying cannot help, and nothing else is lost.
        log.error("refused malformed %s event %r: %s", stage, payload, exc)
        metrics.stage_failed(stage, "malformed_event")
        _deadletter({"stage": stage, "payload": payload}, f"malformed event: {exc}")
        return
    if event.stage != stage:
        metrics.stage_failed(stage, "wrong_stage")
        _deadletter(msgspec.to_builtins(event), f"event for {event.stage!r} on the {stage!r} task")
        return
    store = runtime.store()
    if event.lane == "campaign" and is_cancelled(store, campaign_of_session(event.session_id)):
        # `vars campaign cancel`: acknowledged and dropped, not run (one EXISTS; live
        # sessions are on the live lane and skip the check).
        log.info("dropped %s %s turn %d: its campaign was cancelled", stage, event.session_id, event.turn)
        return
    try:
        if FAULTS_ENABLED:
            _injected_fault(store, event)
        engine = engine_for(store, event.session_id, event.lane)
        step = run_stage(engine, store, event.session_id, event.turn, stage)
        _record_hop(task, event, started)
        # Publishing is inside the retry scope: a commit whose publish failed is retried,
        # finds its commit made, and publishes again.
        advance(event, step)
    except (StrayEvent, UnknownSession) as exc:
        # Off-route or for an unknown session: retrying cannot help, and the session (if
        # any) is left as it is.
        log.error("refused %s event %r: %s", stage, msgspec.to_builtins(event), exc)
        metrics.stage_failed(stage, exc)
        _deadletter(msgspec.to_builtins(event), f"refused: {exc}")
        return
    except CampaignSettingsError as exc:
        # Not transient: fail the session now, through the normal failure path.
        metrics.stage_failed(stage, exc)
        _fail(event, stage, f"{stage} refused: {exc}")
        return
    except Exception as exc:
        attempt = task.request.retries
        if attempt < MAX_RETRIES:
            log.warning("%s %s turn %d failed (%s), retry %d", stage, event.session_id, event.turn, exc, attempt + 1)
            raise task.retry(exc=exc, countdown=backoff_seconds(attempt), max_retries=MAX_RETRIES) from exc
        metrics.stage_failed(stage, exc)
        _fail(event, stage, f"{stage} failed after {attempt + 1} attempts: {type(exc).__name__}: {exc}")
        return


def _fail(event: StageTask, stage: str, reason: str) -> None:
    """Mark the session failed: dead letter, campaign failure entry, end (and the lane goes on)."""
    store = runtime.store()
    log.error("session %s failed: %s", event.session_id, reason)
    _deadletter(msgspec.to_builtins(event), reason)
    try:
        # Where it failed, for `vars campaign failures` and `retry` (campaign sessions).
        record_failure(store, store.session(event.session_id), stage, event.turn, reason)
        finish(event.session_id, event.lane, failure=reason)
    except Exception:  # e.g. the session itself is unreadable: the dead letter says why
        log.exception("could not close failed session %s", event.session_id)


def hops_key(store: StateStore, session_id: str) -> str:
    return store.keys.session(session_id, "hops")


def _record_hop(task: Task, event: StageTask, started: float) -> None:
    """Audit trail: which queue and which worker ran each stage of each turn, and how
    long the event waited between its publishing and the task's start, in ms (empty
    when the event carries no send time). ``turn|stage|routing key|worker|wait``."""
    delivery = task.request.delivery_info or {}
    wait = f"{(started - event.sent_at) * 1000:.3f}" if event.sent_at else ""
    hop = f"{event.turn}|{event.stage}|{delivery.get('routing_key', '')}|{task.request.hostname or ''}|{wait}"
    store = runtime.store()
    store.backend.apply([Op("rpush", hops_key(store, event.session_id), value=hop.encode())])


def _deadletter(event: dict, reason: str) -> None:
    store = runtime.store()
    entry = msgspec.json.encode({"event": event, "reason": reason})
    store.backend.apply([Op("rpush", deadletter_key(store), value=entry)])


def _make_task(stage: str) -> Task:
    # Any arguments are accepted, so a message with the wrong ones reaches this code and
    # is dead-lettered, instead of failing in Celery's call with a TypeError and dropped.
    def stage_task(self: Task, *args: object, **kwargs: object) -> None:
        if len(args) != 1 or kwargs:
            log.error("refused a %s task called with %d arguments and %s", stage, len(args), sorted(kwargs))
            metrics.stage_failed(stage, "malformed_event")
            _deadletter(
                {"stage": stage, "args": list(args), "kwargs": kwargs},
                f"malformed task call: {len(args)} arguments and {len(kwargs)} keyword arguments, "
                "expected one event",
            )
            return
        execute(self, stage, args[0])  # type: ignore[arg-type]  (execute checks the event)

    stage_task.__name__ = f"{stage}_task"
    return app.task(name=f"vars.{stage}", bind=True, acks_late=True)(stage_task)


STAGE_TASKS: dict[str, Task] = {stage: _make_task(stage) for stage in STAGES}
