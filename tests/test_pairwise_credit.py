"""The pairwise conflict credit in the pipeline: the extract stage, after the merge finds the
restated card r, moves r above the conflicting cards of the list the user reacted to, in the
same atomic commit, once however often the stage is delivered."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from vars_core.engine import Engine
from vars_core.memory import merge_ops, plan_merge
from vars_core.policy import effective_vector
from vars_core.problems import load_problems
from vars_core.runner import new_session, register_profile
from vars_core.scripted.catalog import entry
from vars_core.scripted.profiles import generate_profiles
from vars_core.scripted.user import enforcement
from vars_core.stages import run_stage
from vars_core.store import StateStore
from vars_core.store.state import decode
from vars_core.types import (
    ExtractedPreference,
    ExtractResult,
    JudgeResult,
    Message,
    RetrievalTrace,
    SimulatorTurn,
    UserVector,
)

WINNER, LOSER = entry("math_steps"), entry("verb_result_only")  # one conflict group
OPENING = "Quick question: I'm working on a math problem.\n\nWhat is 12 * 12?"


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        return StateStore()
    from vars_core.store.connect import connect
    from vars_core.store.redis_backend import RedisBackend

    url = request.getfixturevalue("redis_url")
    return StateStore(RedisBackend(connect(url)), namespace=request.getfixturevalue("namespace"))


def _card_ids(store, engine, user_id):
    """Both sides of the conflict in the user's memory (different conditions: both kept)."""
    user = store.user(user_id)
    prefs = [ExtractedPreference(e.condition, e.action, 0.9) for e in (WINNER, LOSER)]
    plan = plan_merge(
        user_id, {}, {}, prefs, engine.embedder.embed, engine.projection.project,
        engine.projection.version, engine.config.memory, "000001.0001",
    )
    store.backend.apply(merge_ops(user, plan))
    return plan.added


def _at_turn_two(store, engine):
    """A rag_vector session whose first list held both cards, and whose user then restated
    the winner (as the scripted user does when the agent followed the loser)."""
    profile = generate_profiles(1, seed=0)[0]
    register_profile(store, "pc", profile)
    state = new_session("pc", profile, "rag_vector", 1, load_problems(["math-500"]), 0, 6)
    state = msgspec.structs.replace(state, opening=OPENING)
    store.backend.apply([store.put_session_op(state)])
    r, c = _card_ids(store, engine, state.user_id)
    for stage in ("simulate", "extract", "retrieve", "generate"):
        run_stage(engine, store, state.session_id, 1, stage)
    message = enforcement(WINNER.preference()) + " Please revise your answer."
    turn = SimulatorTurn(message=message, terminate=False, enforced=[WINNER.pref_id])
    store.backend.apply(
        [store.stage_output_op(state.session_id, 2, "simulate", turn),
         store.append_message_op(state.session_id, Message("user", message, 2))],
        marker=store.keys.marker(state.session_id, 2, "simulate"),
    )
    for stage in ("judge", "update"):
        run_stage(engine, store, state.session_id, 2, stage)
    return state, r, c


def _margin(engine, store, user_id, trace, r, c) -> float:
    vector = store.user(user_id).stored_vector()
    z = effective_vector(vector, engine.config.policy)
    v = np.asarray(trace.item_vectors)
    ids = trace.candidate_ids
    return float(z @ (v[ids.index(r)] - v[ids.index(c)]))


def test_a_restated_winner_moves_above_the_conflicting_card_once(engine, store):
    state, r, c = _at_turn_two(store, engine)
    user = store.user(state.user_id)
    trace = decode(store.backend.get(user.trace_key(state.session_id, 1)), RetrievalTrace)
    assert {r, c} <= {trace.candidate_ids[i] for i in trace.chosen}
    before = user.stored_vector() or UserVector([], [])
    margin_before = _margin(engine, store, state.user_id, trace, r, c) if before.z_long else 0.0

    step = run_stage(engine, store, state.session_id, 2, "extract")
    result = store.stage_output(state.session_id, 2, "extract", ExtractResult)
    assert [(s.restated, s.conflicting) for s in result.credit] == [(r, c)]
    after = user.stored_vector()
    assert after.pairwise_steps == before.pairwise_steps + 1
    assert _margin(engine, store, state.user_id, trace, r, c) > margin_before + 1e-4
    assert after.updates == before.updates and after.baseline == before.baseline

    # a duplicate delivery of the same task: the same next step, nothing applied twice
    assert run_stage(engine, store, state.session_id, 2, "extract") == step
    assert user.stored_vector() == after
    assert store.is_committed(state.session_id, 2, "extract")


def test_no_credit_without_a_negative_reaction(engine):
    store = StateStore()
    state, r, c = _at_turn_two(store, engine)
    judged = store.stage_output(state.session_id, 2, "judge", JudgeResult)
    praise = msgspec.structs.replace(judged, label="pos_praise", reward=0.8)
    store.backend.apply([store.stage_output_op(state.session_id, 2, "judge", praise)])
    before = store.user(state.user_id).stored_vector()
    run_stage(engine, store, state.session_id, 2, "extract")
    assert store.stage_output(state.session_id, 2, "extract", ExtractResult).credit == []
    assert store.user(state.user_id).stored_vector() == before
