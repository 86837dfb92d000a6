"""The in-process session runner: one simulated session, stage after stage, in this process.

This is the reference behaviour. The queued pipeline runs the very same ``run_stage``
calls through workers and must produce the same transcript and the same user vector.
"""

from __future__ import annotations

from vars_core.engine import Engine
from vars_core.problems import pick_problem
from vars_core.routing import Step
from vars_core.stages import run_stage, start_session
from vars_core.store import StateStore
from vars_core.types import Problem, Profile, SessionRecord, SessionState


def lane_user_id(campaign_id: str, method: str, profile_id: str) -> str:
    """Each profile x method lane of a campaign is its own user: lanes never share memory."""
    return f"{campaign_id}:{method}:{profile_id}"


def session_id_for(user_id: str, session_index: int) -> str:
    return f"{user_id}:s{session_index}"


def register_profile(store: StateStore, campaign_id: str, profile: Profile) -> None:
    store.backend.apply([store.put_profile_op(campaign_id, profile.profile_id, profile)])


def new_session(
    campaign_id: str,
    profile: Profile,
    method: str,
    session_index: int,
    problems: list[Problem],
    seed: int,
    max_turns: int,
) -> SessionState:
    user_id = lane_user_id(campaign_id, method, profile.profile_id)
    # The problem depends on the profile and index, not the method: methods face the same work.
    problem = pick_problem(problems, seed, profile.profile_id, session_index)
    return SessionState(
        session_id=session_id_for(user_id, session_index),
        user_id=user_id,
        method=method,
        profile_id=profile.profile_id,
        session_index=session_index,
        problem=problem,
        max_turns=max_turns,
        seed=seed,
        campaign_id=campaign_id,
    )


def run_session(engine: Engine, store: StateStore, state: SessionState) -> SessionRecord:
    state = start_session(engine, store, state)
    step: Step | None = Step("simulate", 1)
    while step is not None:
        step = run_stage(engine, store, state.session_id, step.turn, step.stage)
    record = store.session_record(state.session_id)
    assert record is not None, "a finished session always has a record"
    return record


def run_lane(
    engine: Engine,
    store: StateStore,
    campaign_id: str,
    profile: Profile,
    method: str,
    sessions: int,
    problems: list[Problem],
    seed: int,
    max_turns: int,
) -> list[SessionRecord]:
    """Every session of one profile x method lane, in order (memory carries over)."""
    register_profile(store, campaign_id, profile)
    return [
        run_session(
            engine,
            store,
            new_session(campaign_id, profile, method, index, problems, seed, max_turns),
        )
        for index in range(1, sessions + 1)
    ]
