"""A campaign as the pipeline sees it: its plan in the store, and how a lane goes on.

Each profile x method lane is its own user; its sessions run in order (memory and the
user vector carry over), lanes run in parallel. When a session ends, the worker that
ended it starts the lane's next session, so a campaign needs no coordinator to progress.
"""

from __future__ import annotations

import time
from functools import lru_cache

import msgspec

from vars_core.engine import Engine
from vars_core.problems import load_problems
from vars_core.runner import new_session, register_profile
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


def first_sessions(engine: Engine, store: StateStore, plan: CampaignPlan) -> list[SessionState]:
    return [
        lane_session(engine, store, plan, profile_id, method, 1)
        for profile_id in plan.profile_ids
        for method in plan.methods
    ]


def next_in_lane(engine: Engine, store: StateStore, finished: SessionState) -> SessionState | None:
    """The lane's next session, started; None when the lane is complete."""
    if not finished.campaign_id:
        return None
    plan = load_plan(store, finished.campaign_id)
    if finished.session_index >= plan.sessions:
        return None
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
