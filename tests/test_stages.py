"""Stage handlers over the in-memory store: the memory path from a statement to a prompt."""

from __future__ import annotations

import msgspec
import pytest

from vars_core.config import load_config
from vars_core.engine import Engine
from vars_core.problems import load_problems
from vars_core.runner import new_session, register_profile
from vars_core.scripted.profiles import generate_profiles
from vars_core.stages import run_stage
from vars_core.store import StateStore
from vars_core.store.state import decode
from vars_core.types import ExtractResult, RetrievalTrace, RetrieveResult


@pytest.fixture(scope="module")
def engine():
    # The dense path alone (no reranker): these tests are about the cosine match of a
    # stated preference to a later query.
    return Engine(load_config({"reranker": {"kind": "none"}}))


def _session(store, engine, index: int, opening: str, method: str = "rag"):
    profile = generate_profiles(1, seed=0)[0]
    register_profile(store, "st", profile)
    state = new_session("st", profile, method, index, load_problems(["mmlu"]), 0, 6)
    state = msgspec.structs.replace(state, opening=opening)
    store.backend.apply([store.put_session_op(state)])
    return state


def test_a_stated_preference_is_retrieved_for_a_later_related_query(engine):
    store = StateStore()
    first = _session(
        store, engine, 1,
        "Before we start: when writing python code, use snake_case names. "
        "Also, when answering a medical question, remind me to consult a doctor. What is 2 + 2?",
    )
    for stage in ("simulate", "extract"):
        run_stage(engine, store, first.session_id, 1, stage)
    extracted = store.stage_output(first.session_id, 1, "extract", ExtractResult)
    assert extracted is not None and len(extracted.added) == 2

    # Unrelated cards, so retrieval has to choose.
    later = _session(store, engine, 2, "I'm writing Python code for a binary search; can you help me name the helpers?")
    user = store.user(later.user_id)
    assert len(user.cards()) == 2
    for stage in ("simulate", "extract", "retrieve"):
        run_stage(engine, store, later.session_id, 1, stage)
    result = store.stage_output(later.session_id, 1, "retrieve", RetrieveResult)
    assert result is not None
    assert result.notes[0] == "When writing python code, use snake_case names."
    trace = decode(store.backend.get(user.trace_key(later.session_id, 1)), RetrievalTrace)
    assert not trace.sampled  # rag: greedy, the vector plays no part
    assert trace.base_scores[trace.chosen[0]] == max(trace.base_scores)


def test_run_stage_twice_commits_once(engine):
    store = StateStore()
    state = _session(store, engine, 1, "When writing python code, use snake_case names. What is 2 + 2?")
    first = run_stage(engine, store, state.session_id, 1, "simulate")
    again = run_stage(engine, store, state.session_id, 1, "simulate")
    assert first == again
    assert len(store.messages(state.session_id)) == 1


def test_unknown_stage_is_a_clear_error(engine):
    store = StateStore()
    state = _session(store, engine, 1, "What is 2 + 2?")
    with pytest.raises(ValueError, match="unknown stage 'summarize'"):
        run_stage(engine, store, state.session_id, 1, "summarize")


def test_a_stage_off_the_route_is_refused_and_changes_nothing(engine):
    from vars_core.stages import StrayEvent

    store = StateStore()
    state = _session(store, engine, 1, "What is 2 + 2?", method="rag")
    run_stage(engine, store, state.session_id, 1, "simulate")
    with pytest.raises(StrayEvent, match="judge at turn 1"):
        run_stage(engine, store, state.session_id, 1, "judge")  # no previous turn to judge
    with pytest.raises(StrayEvent, match="simulate at turn 3"):
        run_stage(engine, store, state.session_id, 3, "simulate")  # turn 2 never happened
    assert len(store.messages(state.session_id)) == 1
    assert not store.is_committed(state.session_id, 1, "judge")
