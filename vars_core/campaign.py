"""A campaign as the pipeline sees it: its plan in the store, and how a lane goes on.

Each profile x method lane is its own user; its sessions run in order (memory and the
user vector carry over), lanes run in parallel. When a session ends, the worker that
ended it starts the lane's next session, so a campaign needs no coordinator to progress.

With ``parallelism`` P, launch starts only the first P lanes (plan order: profile-major x
method, as ``lanes`` lists them). When a lane completes, the worker that ended its last
session claims the next lane (``claim_next_lane``) and starts that lane's first session.
Two keys next to the plan: ``next_lane`` (how many lanes have been claimed, the cursor)
and ``successors`` (hash: completed lane's user id -> the lane index it claimed). The
claim is one WATCH transaction over both, so two workers never claim the same lane and a
duplicate end of one lane claims nothing new (it gets the same lane back, whose start is
idempotent). Lanes in flight = claimed - completed <= P.

``vars campaign extend`` on such a campaign appends the lanes that had completed to
``restarts`` (a list of ``lane index:first session``, in lane order, with its own cursor
``next_restart``), and starts only as many as the bound leaves free. A claim takes the
cursor's next lane first and, once every lane has been claimed, the next restart. A lane's completion is named by its user id and
the session it completed at (``user@index``), so its completion after an extend is a new
claim, not a duplicate of the one before.
"""

from __future__ import annotations

import time
from functools import lru_cache

import msgspec

from vars_core.engine import Engine
from vars_core.problems import load_problems
from vars_core.runner import lane_user_id, new_session, register_profile
from vars_core.stages import start_session
from vars_core.store import StateStore
from vars_core.store.backend import Op
from vars_core.store.state import decode, encode
from vars_core.types import Problem, Profile, SessionState


class CampaignPlan(msgspec.Struct, frozen=True):
    campaign_id: str
    name: str
    methods: list[str]
    profile_ids: list[str]
    sessions: int
    max_turns: int
    datasets: list[str]
    seed: int
    parallelism: int | None = None  # lanes in flight at once; None: all
    # Engine settings the spec pins (reward judge; backends.<role> tables as written);
    # workers apply them over their own config for this campaign (workers/runtime.py).
    reward: str | None = None
    backends: dict[str, dict] = msgspec.field(default_factory=dict)

    @property
    def total_sessions(self) -> int:
        return len(self.methods) * len(self.profile_ids) * self.sessions


@lru_cache(maxsize=32)
def _problems(datasets: tuple[str, ...]) -> list[Problem]:
    return load_problems(list(datasets))


def problems_for(plan: CampaignPlan) -> list[Problem]:
    return _problems(tuple(plan.datasets))


def save_plan(store: StateStore, plan: CampaignPlan, profiles: list[Profile]) -> None:
    for profile in profiles:
        register_profile(store, plan.campaign_id, profile)
    store.backend.apply([Op("set", store.keys.campaign(plan.campaign_id, "plan"), value=encode(plan))])


def load_plan(store: StateStore, campaign_id: str) -> CampaignPlan:
    data = store.backend.get(store.keys.campaign(campaign_id, "plan"))
    if data is None:
        raise KeyError(f"unknown campaign {campaign_id!r}")
    return decode(data, CampaignPlan)


def lane_session(
    engine: Engine, store: StateStore, plan: CampaignPlan, profile_id: str, method: str, index: int
) -> SessionState:
    """Create (idempotently) and start session ``index`` of one lane."""
    profile = store.profile(plan.campaign_id, profile_id, Profile)
    state = new_session(
        plan.campaign_id, profile, method, index, problems_for(plan), plan.seed, plan.max_turns
    )
    return start_session(engine, store, state)


NEXT_LANE, SUCCESSORS = "next_lane", "successors"
RESTARTS, NEXT_RESTART = "restarts", "next_restart"


class LaneClaim(msgspec.Struct, frozen=True):
    """A lane to start (or go on with) because another completed."""

    profile_id: str
    method: str
    first_index: int  # its first session to run: 1, or the one after an extend


def completion(user_id: str, session_index: int) -> str:
    """The successors field naming a lane's completion at ``session_index``."""
    return f"{user_id}@{session_index}"


def lanes(plan: CampaignPlan) -> list[tuple[str, str]]:
    """(profile_id, method) of every lane, in the order lanes start."""
    return [(profile_id, method) for profile_id in plan.profile_ids for method in plan.methods]


def initial_lanes(plan: CampaignPlan) -> int:
    count = len(plan.profile_ids) * len(plan.methods)
    return count if plan.parallelism is None else min(plan.parallelism, count)


def claimed_lanes(store: StateStore, plan: CampaignPlan) -> int:
    """How many lanes (a prefix of ``lanes(plan)``) may have started: all without
    parallelism; else the cursor (the launch's P when it is not there yet)."""
    if plan.parallelism is None:
        return len(plan.profile_ids) * len(plan.methods)
    raw = store.backend.get(store.keys.campaign(plan.campaign_id, NEXT_LANE))
    return initial_lanes(plan) if raw is None else int(raw)


def claimed_successor(store: StateStore, plan: CampaignPlan, completed: str) -> str | None:
    """What completion ``completed`` (``completion(user, index)``) claimed, or None."""
    raw = store.backend.hget(store.keys.campaign(plan.campaign_id, SUCCESSORS), completed)
    return None if raw is None else raw.decode()


def pending_restarts(store: StateStore, plan: CampaignPlan) -> list[tuple[int, int]]:
    """(lane index, first session) of the lanes an extend queued and no claim took yet."""
    raw = store.backend.get(store.keys.campaign(plan.campaign_id, NEXT_RESTART))
    taken = int(raw) if raw is not None else 0
    queued = store.backend.lrange(store.keys.campaign(plan.campaign_id, RESTARTS), taken, -1)
    return [_restart(entry.decode()) for entry in queued]


def _restart(entry: str) -> tuple[int, int]:
    lane, _, first = entry.partition(":")
    return int(lane), int(first)


def claim_next_lane(store: StateStore, plan: CampaignPlan, completed: str) -> LaneClaim | None:
    """The lane to start because of ``completed`` (``completion(user, index)``, or a name
    of the extend's own): the next lane the cursor has not reached, else the next queued
    restart, or what the same completion claimed before (a duplicate end). None when
    nothing is left to start."""
    cursor = store.keys.campaign(plan.campaign_id, NEXT_LANE)
    successors = store.keys.campaign(plan.campaign_id, SUCCESSORS)
    restarts = store.keys.campaign(plan.campaign_id, RESTARTS)
    next_restart = store.keys.campaign(plan.campaign_id, NEXT_RESTART)
    order = lanes(plan)

    def build() -> tuple[list[Op], str | None]:
        prior = store.backend.hget(successors, completed)
        if prior is not None:
            return [], prior.decode()
        claimed = claimed_lanes(store, plan)
        if claimed < len(order):
            value = f"{claimed}:1"
            return [Op("set", cursor, value=str(claimed + 1).encode()), Op("hset", successors, completed, value.encode())], value
        raw = store.backend.get(next_restart)
        taken = int(raw) if raw is not None else 0
        queued = store.backend.lrange(restarts, taken, taken)
        if not queued:
            return [], None
        ops = [Op("set", next_restart, value=str(taken + 1).encode()), Op("hset", successors, completed, queued[0])]
        return ops, queued[0].decode()

    value = store.backend.transact([cursor, successors, restarts, next_restart], build)
    if value is None:
        return None
    lane, first = _restart(value)
    if lane >= len(order):
        return None
    profile_id, method = order[lane]
    return LaneClaim(profile_id, method, first)


def queue_restarts(store: StateStore, plan: CampaignPlan, entries: list[tuple[int, int]]) -> None:
    """Append lanes to restart (an extend under bounded parallelism); a lane still waiting
    in the queue is not queued twice, so an interrupted extend can run again."""
    restarts = store.keys.campaign(plan.campaign_id, RESTARTS)
    next_restart = store.keys.campaign(plan.campaign_id, NEXT_RESTART)

    def build() -> tuple[list[Op], None]:
        waiting = {lane for lane, _ in pending_restarts(store, plan)}
        values = [f"{lane}:{first}".encode() for lane, first in entries if lane not in waiting]
        return [Op("rpush", restarts, value=v) for v in values], None

    store.backend.transact([restarts, next_restart], build)


def first_sessions(engine: Engine, store: StateStore, plan: CampaignPlan) -> list[SessionState]:
    """Start the first session of the first ``parallelism`` lanes (all lanes without it)."""
    count = initial_lanes(plan)
    if plan.parallelism is not None:
        cursor = store.keys.campaign(plan.campaign_id, NEXT_LANE)
        store.backend.transact(
            [cursor],
            lambda: ([] if store.backend.exists(cursor) else [Op("set", cursor, value=str(count).encode())], None),
        )
    return [lane_session(engine, store, plan, profile_id, method, 1) for profile_id, method in lanes(plan)[:count]]


def next_in_lane(engine: Engine, store: StateStore, finished: SessionState) -> SessionState | None:
    """The lane's next session, started; None when the lane is complete or the campaign
    was cancelled."""
    if not finished.campaign_id or is_cancelled(store, finished.campaign_id):
        return None
    plan = load_plan(store, finished.campaign_id)
    if finished.session_index >= plan.sessions:
        if plan.parallelism is None:
            return None
        # The lane is complete: start the next lane not yet started (bounded parallelism).
        user = lane_user_id(plan.campaign_id, finished.method, finished.profile_id)
        claimed = claim_next_lane(store, plan, completion(user, finished.session_index))
        if claimed is None:
            return None
        return lane_session(engine, store, plan, claimed.profile_id, claimed.method, claimed.first_index)
    return lane_session(
        engine, store, plan, finished.profile_id, finished.method, finished.session_index + 1
    )


def progress(store: StateStore, campaign_id: str) -> tuple[int, int]:
    """(sessions done, sessions failed)."""
    done = store.backend.get(store.keys.campaign(campaign_id, "done"))
    failed = store.backend.get(store.keys.campaign(campaign_id, "failed"))
    return int(done or 0), int(failed or 0)


def finished_session_ids(store: StateStore, campaign_id: str, start: int = 0) -> list[str]:
    raw = store.backend.lrange(store.keys.campaign(campaign_id, "finished"), start, -1)
    return [item.decode() for item in raw]


def register_campaign(store: StateStore, campaign_id: str, launched_at: float | None = None) -> float:
    """Record a launched campaign and its launch time (Unix seconds) in the registry."""
    stamp = time.time() if launched_at is None else launched_at
    store.backend.apply([Op("hset", store.keys.campaigns(), campaign_id, repr(stamp).encode())])
    return stamp


def registered_campaigns(store: StateStore) -> list[tuple[str, float]]:
    """(campaign id, launch time) of every registered campaign, newest first."""
    raw = store.backend.hgetall(store.keys.campaigns())
    entries = [(campaign_id, float(stamp)) for campaign_id, stamp in raw.items()]
    return sorted(entries, key=lambda e: (e[1], e[0]), reverse=True)


def launched_at(store: StateStore, campaign_id: str) -> float | None:
    """A campaign's launch time, or None if it was never registered."""
    stamp = store.backend.hget(store.keys.campaigns(), campaign_id)
    return None if stamp is None else float(stamp)


# Campaign control keys, next to the plan (``Keys.campaign(id, ...)``):
#   cancelled    Unix time of `vars campaign cancel`, as text; its presence stops the campaign.
#   finished_at  Unix time when done + failed first reached the planned total, as text.
#   failures     per-campaign dead letters: one JSON CampaignFailure per failed attempt.
CANCELLED, FINISHED_AT, FAILURES = "cancelled", "finished_at", "failures"


def campaign_of_session(session_id: str) -> str:
    """The campaign id in a campaign session id (``{campaign}:{method}:{profile}:s{n}``);
    spec names forbid ':', so the id is everything before the first one."""
    return session_id.split(":", 1)[0]


def is_cancelled(store: StateStore, campaign_id: str) -> bool:
    """One EXISTS: cheap enough to ask at the start of every campaign stage task."""
    return store.backend.exists(store.keys.campaign(campaign_id, CANCELLED))


def cancelled_at(store: StateStore, campaign_id: str) -> float | None:
    stamp = store.backend.get(store.keys.campaign(campaign_id, CANCELLED))
    return None if stamp is None else float(stamp)


def cancel_campaign(store: StateStore, campaign_id: str, now: float | None = None) -> tuple[str, float | None]:
    """Mark a campaign cancelled. Returns ("cancelled", at), ("already", at) for a campaign
    cancelled before, or ("finished", None) for one that already ended (left as it is)."""
    plan = load_plan(store, campaign_id)  # KeyError for an unknown id
    key = store.keys.campaign(campaign_id, CANCELLED)

    def build() -> tuple[list[Op], tuple[str, float | None]]:
        stamp = store.backend.get(key)
        if stamp is not None:
            return [], ("already", float(stamp))
        done, failed = progress(store, campaign_id)
        if done + failed >= plan.total_sessions:
            return [], ("finished", None)
        at = time.time() if now is None else now
        return [Op("set", key, value=repr(at).encode())], ("cancelled", at)

    return store.backend.transact([key], build)


def finished_at(store: StateStore, campaign_id: str) -> float | None:
    stamp = store.backend.get(store.keys.campaign(campaign_id, FINISHED_AT))
    return None if stamp is None else float(stamp)


def mark_finished_if_complete(store: StateStore, campaign_id: str, total: int | None = None) -> float | None:
    """Store ``finished_at`` once done + failed reaches the plan's total; return it (None
    while the campaign is not complete). Idempotent and safe to call from every session
    end: set-if-absent under WATCH of the stamp and both counters, so a concurrent retry
    (which decrements ``failed`` and deletes the stamp) cannot leave a stale one."""
    key = store.keys.campaign(campaign_id, FINISHED_AT)
    if total is None:
        try:
            total = load_plan(store, campaign_id).total_sessions
        except KeyError:  # sessions run in-process without a stored plan
            return None
    done_key, failed_key = store.keys.campaign(campaign_id, "done"), store.keys.campaign(campaign_id, "failed")
    if sum(progress(store, campaign_id)) < total and not store.backend.exists(key):
        return None  # the common case, without a transaction

    plan_key = store.keys.campaign(campaign_id, "plan")

    def build() -> tuple[list[Op], float | None]:
        stamp = store.backend.get(key)
        if stamp is not None:
            return [], float(stamp)
        # The plan is WATCHed and read again: `vars campaign extend` raises the total and
        # deletes the stamp, so a total read before it must not stamp the campaign.
        stored = store.backend.get(plan_key)
        current = total if stored is None else max(total, decode(stored, CampaignPlan).total_sessions)
        if sum(progress(store, campaign_id)) < current:
            return [], None
        at = time.time()
        return [Op("set", key, value=repr(at).encode())], at

    return store.backend.transact([key, done_key, failed_key, plan_key], build)


class CampaignFailure(msgspec.Struct):
    """Where and why one session of a campaign failed (retries exhausted)."""

    session_id: str
    method: str
    profile_id: str
    session_index: int
    stage: str
    turn: int
    reason: str
    at: float = 0.0


def record_failure(store: StateStore, session: SessionState, stage: str, turn: int, reason: str) -> None:
    """Append a campaign session's failure to its campaign's dead-letter list."""
    if not session.campaign_id:
        return
    entry = CampaignFailure(
        session.session_id, session.method, session.profile_id, session.session_index,
        stage, turn, reason, time.time(),
    )
    key = store.keys.campaign(session.campaign_id, FAILURES)
    store.backend.apply([Op("rpush", key, value=msgspec.json.encode(entry))])


def failure_entries(store: StateStore, campaign_id: str) -> list[CampaignFailure]:
    """Every failure entry, oldest first (a session retried and failed again has several)."""
    raw = store.backend.lrange(store.keys.campaign(campaign_id, FAILURES))
    return [msgspec.json.decode(item, type=CampaignFailure) for item in raw]
