"""`vars campaign extend`: continue every lane of a campaign to more sessions.

A lane (one profile x method, user ``{campaign}:{method}:{profile}``) keeps its cards, its
user vector and its contextual/reflection memory in the store, so going on is only a
matter of a larger plan and, for lanes that had stopped, starting their next session:

1. In one transaction (WATCHing the plan and the cancel stamp): refuse a cancelled
   campaign or a total that does not grow; else store the plan with the new ``sessions``,
   the stored spec's ``sessions`` likewise (campaign.json and reports show what ran), and
   delete ``finished_at``.
2. For every lane: find its highest started session k. If k has ended and k < the new
   total, start session k + 1 (``lane_session``, idempotent) and publish its first event
   unless that already ran. A lane still running needs nothing: when its session ends the
   worker reads the new plan in ``next_in_lane`` and starts the next itself. Should a
   worker end a lane's session right as we look, both may start the next session: the
   start is idempotent and the event is published only while its first stage is not
   committed, as ``workers.tasks.finish`` does, so at worst one duplicate delivery, which
   the idempotent commits absorb.

3. With bounded parallelism (plan ``parallelism`` P) the completed lanes are not all
   started at once: they are queued as restarts (``vars_core.campaign.queue_restarts``) and
   only as many start as leave at most P lanes in flight; each lane that completes later
   claims the next one, as lanes do at launch.

Re-running an interrupted extend (same or larger N) picks up the lanes it had not started.
Sessions are reproducible by (seed, profile, index) and the lane's memory, so sessions
past the old total equal those of a campaign planned that long from the start.
"""

from __future__ import annotations

import msgspec
from celery import Celery

from queues.events import StageTask
from scheduler.status import UnknownCampaign, _plan
from vars_core.campaign import (
    CANCELLED,
    FINISHED_AT,
    CampaignPlan,
    claim_next_lane,
    claimed_lanes,
    lane_session,
    lanes,
    pending_restarts,
    queue_restarts,
)
from vars_core.engine import Engine
from vars_core.runner import lane_user_id, session_id_for
from vars_core.stages.lifecycle import START_TURN
from vars_core.store import StateStore
from vars_core.store.backend import Op
from vars_core.store.state import encode
from workers.publish import publish_many


class ExtendRefused(RuntimeError):
    """An extend that cannot be done (cancelled campaign, total not larger)."""


class ExtendResult(msgspec.Struct):
    campaign_id: str
    previous: int  # sessions per lane before
    sessions: int  # sessions per lane now
    total: int  # sessions in the campaign now
    started: list[str] = msgspec.field(default_factory=list)  # sessions started here
    running: int = 0  # lanes still running: they go on by themselves


def _store_plan(store: StateStore, campaign_id: str, sessions: int) -> tuple[CampaignPlan, CampaignPlan]:
    plan_key = store.keys.campaign(campaign_id, "plan")
    spec_key = store.keys.campaign(campaign_id, "spec")
    cancel_key = store.keys.campaign(campaign_id, CANCELLED)

    def build() -> tuple[list[Op], tuple[CampaignPlan, CampaignPlan]]:
        old = _plan(store, campaign_id)
        if store.backend.exists(cancel_key):
            raise ExtendRefused(
                f"campaign {campaign_id} was cancelled: its stage tasks are dropped, so it cannot be extended"
            )
        if sessions <= old.sessions:
            raise ExtendRefused(
                f"campaign {campaign_id} already plans {old.sessions} sessions per lane: "
                f"--sessions must be larger (got {sessions})"
            )
        new = msgspec.structs.replace(old, sessions=sessions)
        ops = [Op("set", plan_key, value=encode(new)), Op("del", store.keys.campaign(campaign_id, FINISHED_AT))]
        raw_spec = store.backend.get(spec_key)
        if raw_spec is not None:
            spec = msgspec.json.decode(raw_spec)
            if isinstance(spec, dict) and "sessions" in spec:
                spec["sessions"] = sessions
                ops.append(Op("set", spec_key, value=msgspec.json.encode(spec)))
        return ops, (old, new)

    return store.backend.transact([plan_key, cancel_key, spec_key], build)


def _highest_started(store: StateStore, user_id: str, limit: int) -> int:
    index = 0
    while index < limit and store.is_committed(session_id_for(user_id, index + 1), START_TURN, "start"):
        index += 1
    return index


def extend_campaign(
    app: Celery, engine: Engine, store: StateStore, campaign_id: str, sessions: int
) -> ExtendResult:
    """Continue every lane of ``campaign_id`` to ``sessions`` sessions in total.

    Raises UnknownCampaign for an unknown id and ExtendRefused for a cancelled campaign or
    a ``sessions`` not above the plan's."""
    old, plan = _store_plan(store, campaign_id, sessions)
    result = ExtendResult(campaign_id, old.sessions, plan.sessions, plan.total_sessions)
    if plan.parallelism is not None:
        return _extend_bounded(app, engine, store, plan, result)
    events = []
    for profile_id in plan.profile_ids:
        for method in plan.methods:
            user_id = lane_user_id(campaign_id, method, profile_id)
            last = _highest_started(store, user_id, plan.sessions)
            if last == 0 or last >= plan.sessions:
                continue  # never started (launch did not get to it), or already at the end
            if not store.is_committed(session_id_for(user_id, last), START_TURN, "end"):
                result.running += 1
                continue
            state = lane_session(engine, store, plan, profile_id, method, last + 1)
            if not store.is_committed(state.session_id, 1, "simulate"):
                events.append(StageTask(state.session_id, 1, "simulate", "campaign"))
            result.started.append(state.session_id)
    publish_many(app, events)
    return result


def _extend_bounded(
    app: Celery, engine: Engine, store: StateStore, plan: CampaignPlan, result: ExtendResult
) -> ExtendResult:
    """Queue the completed lanes as restarts and start as many as the bound leaves free."""
    waiting = {lane for lane, _ in pending_restarts(store, plan)}
    in_flight, restarts = 0, []
    for position, (profile_id, method) in enumerate(lanes(plan)[: claimed_lanes(store, plan)]):
        if position in waiting:
            continue  # queued by an earlier extend: it waits for a free slot
        user_id = lane_user_id(plan.campaign_id, method, profile_id)
        last = _highest_started(store, user_id, plan.sessions)
        ended = last > 0 and store.is_committed(session_id_for(user_id, last), START_TURN, "end")
        if last >= plan.sessions or not ended or last < result.previous:
            # claimed and not yet started, running, between sessions, or at the new end
            in_flight += int(not (last >= plan.sessions and ended))
            result.running += int(last < plan.sessions)
            continue
        restarts.append((position, last + 1))
    queue_restarts(store, plan, restarts)
    events = []
    for slot in range(max(0, (plan.parallelism or 0) - in_flight)):
        # Named by the new total and the slot, so a claim is made once per extend.
        claim = claim_next_lane(store, plan, f"extend@{plan.sessions}#{slot}")
        if claim is None:
            break
        state = lane_session(engine, store, plan, claim.profile_id, claim.method, claim.first_index)
        if not store.is_committed(state.session_id, 1, "simulate"):
            events.append(StageTask(state.session_id, 1, "simulate", "campaign"))
        result.started.append(state.session_id)
    publish_many(app, events)
    return result


__all__ = ["ExtendRefused", "ExtendResult", "UnknownCampaign", "extend_campaign"]
