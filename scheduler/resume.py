"""Stalled lanes: `vars campaign resume` (one campaign, now) and `vars campaign sweep`
(every running campaign, lanes with no progress for a while).

A campaign needs no coordinator: the worker that ends a session starts its lane's next one.
So a lost message (a worker killed after it took a task and before it acked it: Celery's
``acks_late`` redelivers only after the 3600 s visibility timeout; a Redis restart that
lost queued messages; a worker that stopped consuming) leaves its lane stalled. Everything
needed to go on is in the store, so a lane is resumed from there:

- the lane's sessions are walked in order while their start is committed; every started
  session that has not ended gets the event of its next step republished (normally only
  the last one; an earlier one only while `vars campaign retry` runs it again);
- the next step of a session is the first stage on its route (``vars_core.routing``) not
  committed. When every stage of its last turn is committed but the end is not, the last
  stage's event is republished: the task finds its commit made, skips it, and ends the
  session (and starts the lane's next), as any duplicate delivery does;
- a lane whose last started session has ended gets its next session started (idempotent)
  and its first event published, unless the lane is complete or the campaign cancelled.

Ended sessions are never touched, so a failed session (retries exhausted; its record and
end are committed) is not resurrected: `vars campaign retry` does that on purpose.
Republishing an event whose stage is still queued is harmless: stage commits are
idempotent by (session, turn, stage) and a duplicate publishes the next event only when
that one is not committed yet (``workers.tasks._already_done``). It can cost a stage run
twice, though, which is why the sweeper waits ``stalled_after`` seconds of no progress.

Bounded parallelism (plan ``parallelism``): a lane the cursor has not reached (never
claimed) is left "waiting", and a completed lane whose successor was never claimed (a
worker died between ending it and claiming) gets it claimed and started here, with the
same idempotent claim the workers use (``vars_core.campaign.claim_next_lane``), so resume
keeps at most ``parallelism`` lanes in flight.

Progress: every stage commit writes ``Keys.progress(session)`` (a Unix time) in the same
atomic step as its marker (``StateStore.commit_stage`` / ``transact_stage``); a republish
writes it too, so the sweeper republishes a lane at most once per ``stalled_after``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import msgspec

from queues.events import StageTask
from queues.topology import queue_for
from scheduler.status import UnknownCampaign, _plan
from vars_core.campaign import (
    CampaignPlan,
    claim_next_lane,
    claimed_lanes,
    claimed_successor,
    completion,
    is_cancelled,
    lane_session,
    lanes,
    launched_at,
    pending_restarts,
    progress,
    registered_campaigns,
)
from vars_core.engine import Engine
from vars_core.methods import get_method
from vars_core.routing import turn_stages
from vars_core.runner import lane_user_id, session_id_for
from vars_core.stages.lifecycle import START_TURN
from vars_core.store import StateStore
from vars_core.types import SessionState, SimulatorTurn

Publish = Callable[[StageTask], None]
Action = Literal["republished", "started", "complete", "running", "cancelled", "waiting", "queued"]


class ResumeRefused(RuntimeError):
    """A resume that must not run (the campaign was cancelled)."""


class LaneResult(msgspec.Struct):
    """What resume/sweep did with one lane (or one session of it)."""

    method: str
    profile_id: str
    # republished | started | complete | running (not stalled) | cancelled | waiting (for a
    # lane slot) | queued (stalled, but its stage's queue is not empty: the sweeper waits)
    action: Action
    session_id: str = ""
    stage: str = ""
    turn: int = 0
    ends: bool = False  # the republished event only finds its commit made and ends the session


class ResumeReport(msgspec.Struct):
    campaign_id: str
    total: int
    finished: int  # done + failed before resuming
    lanes: list[LaneResult] = msgspec.field(default_factory=list)

    @property
    def events(self) -> list[LaneResult]:
        return [r for r in self.lanes if r.action in ("republished", "started")]

    @property
    def lanes_resumed(self) -> int:
        return len({(r.method, r.profile_id) for r in self.events})

    @property
    def lanes_complete(self) -> int:
        return sum(r.action == "complete" for r in self.lanes)


def pending_event(store: StateStore, session: SessionState) -> tuple[StageTask, bool]:
    """The event that moves a started, not ended session on: its first stage not
    committed, or (every stage of its last turn committed) that turn's last stage again,
    which ends the session. The bool says which."""
    sid, method = session.session_id, get_method(session.method)
    turn = 1
    while True:
        if not store.is_committed(sid, turn, "simulate"):
            return StageTask(sid, turn, "simulate", "campaign"), False
        sim = store.stage_output(sid, turn, "simulate", SimulatorTurn)
        terminated = bool(sim and sim.terminate)
        stages = turn_stages(method, turn, terminated)
        for stage in stages:
            if not store.is_committed(sid, turn, stage):
                return StageTask(sid, turn, stage, "campaign"), False
        if terminated:
            return StageTask(sid, turn, stages[-1] if stages else "simulate", "campaign"), True
        turn += 1


def _ended(store: StateStore, session_id: str) -> bool:
    return store.is_committed(session_id, START_TURN, "end")


def _stalled(
    store: StateStore, session_id: str | None, since: float | None, stalled_after: float | None, now: float
) -> bool:
    """No progress for ``stalled_after`` seconds (always True for resume: None). With no
    stamp (no session started yet, or committed before stamps existed) the campaign's
    launch time counts."""
    if stalled_after is None:
        return True
    last = store.last_progress(session_id) if session_id else None
    if last is None:
        last = since or 0.0
    return now - last > stalled_after


def _queue_depth(store: StateStore, stage: str) -> int:
    """Messages waiting in the campaign queue of ``stage`` (a Redis list named after it)."""
    try:
        return store.backend.llen(queue_for(stage, "campaign"))
    except TypeError:  # not a list: an in-memory store, or nothing there
        return 0


def resume_lane(
    engine: Engine,
    store: StateStore,
    plan: CampaignPlan,
    method: str,
    profile_id: str,
    publish: Publish,
    stalled_after: float | None = None,
    now: float | None = None,
) -> list[LaneResult]:
    """Republish what one lane needs to go on (all of it for resume; only what made no
    progress for ``stalled_after`` seconds for the sweeper)."""
    now = time.time() if now is None else now
    cid = plan.campaign_id
    since = launched_at(store, cid)
    user = lane_user_id(cid, method, profile_id)
    out: list[LaneResult] = []

    def republish(event: StageTask, ends: bool) -> None:
        if stalled_after is not None and _queue_depth(store, event.stage) > 0:
            # A deep queue makes every waiting session look stalled; its event is most
            # likely still in there. Republish only once that queue has drained.
            out.append(LaneResult(method, profile_id, "queued", event.session_id, event.stage, event.turn))
            return
        publish(event)
        store.backend.apply([store.progress_op(event.session_id, now)])
        out.append(LaneResult(method, profile_id, "republished", event.session_id, event.stage, event.turn, ends))

    last = 0
    while last < plan.sessions and store.is_committed(session_id_for(user, last + 1), START_TURN, "start"):
        last += 1
        sid = session_id_for(user, last)
        if _ended(store, sid):
            continue
        if _stalled(store, sid, since, stalled_after, now):
            republish(*pending_event(store, store.session(sid)))
        else:
            out.append(LaneResult(method, profile_id, "running", sid))
    if last and not _ended(store, session_id_for(user, last)):
        return out  # the lane's current session was handled above
    if last >= plan.sessions:
        return out or [LaneResult(method, profile_id, "complete")]
    if is_cancelled(store, cid):
        return [*out, LaneResult(method, profile_id, "cancelled")]
    if plan.parallelism is not None:
        position = lanes(plan).index((profile_id, method))
        if not last and position >= claimed_lanes(store, plan):
            return [*out, LaneResult(method, profile_id, "waiting")]  # starts when a lane completes
        if last and position in {lane for lane, _ in pending_restarts(store, plan)}:
            return [*out, LaneResult(method, profile_id, "waiting")]  # an extend queued it
    previous = session_id_for(user, last) if last else None
    if not _stalled(store, previous, since, stalled_after, now):
        # Just ended (the worker that ended it starts the next one), or just launched.
        return [*out, LaneResult(method, profile_id, "running", previous or "")]
    state = lane_session(engine, store, plan, profile_id, method, last + 1)  # idempotent
    publish(StageTask(state.session_id, 1, "simulate", "campaign"))
    store.backend.apply([store.progress_op(state.session_id, now)])
    out.append(LaneResult(method, profile_id, "started", state.session_id, "simulate", 1))
    return out


def start_successors(
    engine: Engine,
    store: StateStore,
    plan: CampaignPlan,
    publish: Publish,
    stalled_after: float | None = None,
    now: float | None = None,
) -> list[LaneResult]:
    """With bounded parallelism: for each completed lane that never claimed its successor
    (its last session ended, with no progress since ``stalled_after``), claim and start it."""
    if plan.parallelism is None or is_cancelled(store, plan.campaign_id):
        return []
    now = time.time() if now is None else now
    since = launched_at(store, plan.campaign_id)
    out: list[LaneResult] = []
    for profile_id, method in lanes(plan):
        user = lane_user_id(plan.campaign_id, method, profile_id)
        last = session_id_for(user, plan.sessions)
        done = completion(user, plan.sessions)
        if not _ended(store, last) or claimed_successor(store, plan, done) is not None:
            continue
        if not _stalled(store, last, since, stalled_after, now):
            continue  # just ended: the worker that ended it claims the successor
        claim = claim_next_lane(store, plan, done)
        if claim is None:
            break  # every lane has been claimed
        state = lane_session(engine, store, plan, claim.profile_id, claim.method, claim.first_index)  # idempotent
        if not store.is_committed(state.session_id, 1, "simulate"):
            publish(StageTask(state.session_id, 1, "simulate", "campaign"))
            store.backend.apply([store.progress_op(state.session_id, now)])
        out.append(LaneResult(claim.method, claim.profile_id, "started", state.session_id, "simulate", 1))
    return out


def resume_campaign(engine: Engine, store: StateStore, campaign_id: str, publish: Publish) -> ResumeReport:
    """`vars campaign resume`: every lane of the plan goes on from where the store says it
    stands. A finished campaign is left as it is (every lane reports complete)."""
    plan = _plan(store, campaign_id)  # UnknownCampaign
    if is_cancelled(store, campaign_id):
        raise ResumeRefused(
            f"campaign {campaign_id} was cancelled: its stage tasks are dropped, so nothing is resumed"
        )
    report = ResumeReport(campaign_id, plan.total_sessions, sum(progress(store, campaign_id)))
    for method in plan.methods:
        for profile_id in plan.profile_ids:
            report.lanes += resume_lane(engine, store, plan, method, profile_id, publish)
    report.lanes += start_successors(engine, store, plan, publish)
    return report


def sweep_once(
    engine: Engine, store: StateStore, publish: Publish, stalled_after: float, now: float | None = None
) -> list[ResumeReport]:
    """One pass of the sweeper over every running campaign (not finished, not cancelled):
    lanes with no progress for ``stalled_after`` seconds get their next event republished.
    Returns a report per campaign where something was republished."""
    now = time.time() if now is None else now
    reports = []
    for campaign_id, _ in registered_campaigns(store):
        try:
            plan = _plan(store, campaign_id)
        except UnknownCampaign:  # its keys were deleted
            continue
        finished = sum(progress(store, campaign_id))
        if finished >= plan.total_sessions or is_cancelled(store, campaign_id):
            continue
        report = ResumeReport(campaign_id, plan.total_sessions, finished)
        for method in plan.methods:
            for profile_id in plan.profile_ids:
                report.lanes += resume_lane(engine, store, plan, method, profile_id, publish, stalled_after, now)
        report.lanes += start_successors(engine, store, plan, publish, stalled_after, now)
        if report.events:
            reports.append(report)
    return reports


def describe(result: LaneResult) -> str:
    if result.action == "started":
        return f"{result.session_id}  started, simulate@turn1"
    suffix = " (committed: ends the session)" if result.ends else ""
    return f"{result.session_id}  {result.stage}@turn{result.turn}{suffix}"


__all__ = [
    "LaneResult",
    "ResumeRefused",
    "ResumeReport",
    "UnknownCampaign",
    "describe",
    "pending_event",
    "resume_campaign",
    "resume_lane",
    "sweep_once",
]
