"""Whole scripted sessions in-process: each method's transcript shows its behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from vars_core.engine import Engine
from vars_core.notes import parse_notes
from vars_core.problems import load_problems
from vars_core.runner import lane_user_id, run_lane
from vars_core.scripted.profiles import generate_profiles
from vars_core.store import StateStore
from vars_core.store.state import decode
from vars_core.types import GenerateResult, RetrievalTrace, SimulatorTurn

SESSIONS = 4


@pytest.fixture(scope="module")
def world():
    engine, store = Engine(), StateStore()
    profile = generate_profiles(1, seed=3)[0]
    problems = load_problems(["math-500", "logiqa", "mmlu"])
    lanes = {
        method: run_lane(engine, store, "rt", profile, method, SESSIONS, problems, seed=3, max_turns=8)
        for method in ("vanilla", "all_memory", "rag", "rag_vector")
    }
    return engine, store, profile, lanes


def _generated(store: StateStore, session_id: str) -> list[GenerateResult]:
    out, turn = [], 1
    while (sim := store.stage_output(session_id, turn, "simulate", SimulatorTurn)) is not None:
        gen = store.stage_output(session_id, turn, "generate", GenerateResult)
        if gen is not None:
            out.append(gen)
        if sim.terminate:
            break
        turn += 1
    return out


def test_every_session_finishes_with_a_record(world):
    _, store, _, lanes = world
    for method, records in lanes.items():
        assert [r.session_index for r in records] == list(range(1, SESSIONS + 1)), method
        for record in records:
            assert record.turns >= 1 and record.status == "done"
            messages = store.messages(record.session_id)
            assert messages[0].role == "user" and messages[1].role == "assistant"


def test_vanilla_never_gets_the_preferences(world):
    _, store, profile, lanes = world
    for record in lanes["vanilla"]:
        assert all(gen.notes == [] for gen in _generated(store, record.session_id))
    assert store.user(lane_user_id("rt", "vanilla", profile.profile_id)).cards() == {}
    # Without memory the user has to restate preferences in every session.
    assert all(r.enforcements > 0 for r in lanes["vanilla"])


def test_enforcements_are_stated_as_notes_and_become_cards(world):
    _, store, profile, lanes = world
    first = lanes["all_memory"][0]
    stated = {
        pair
        for m in store.messages(first.session_id)
        if m.role == "user" and m.turn > 1  # enforcements, not the pasted problem text
        for pair in parse_notes(m.content)
    }
    assert stated, "the simulated user restated no preference in the first session"
    cards = store.user(lane_user_id("rt", "all_memory", profile.profile_id)).cards()
    assert stated <= {(c.condition, c.action) for c in cards.values()}


def test_all_memory_puts_every_card_in_the_prompt(world):
    _, store, profile, lanes = world
    last = lanes["all_memory"][-1]
    cards = store.user(lane_user_id("rt", "all_memory", profile.profile_id)).cards()
    first_turn_notes = _generated(store, last.session_id)[0].notes
    # Cards as they stood when that turn ran: those made in earlier sessions.
    before = {c.note for c in cards.values() if c.created_at < f"{last.session_index:06d}"}
    assert before and set(first_turn_notes) == before


def test_rag_retrieves_at_most_k_ranked_cards_plus_the_global_ones_and_learns_nothing(world):
    engine, store, profile, lanes = world
    user = store.user(lane_user_id("rt", "rag", profile.profile_id))
    notes = {c.note for c in user.cards().values()}
    policy = engine.config.policy
    for record in lanes["rag"][1:]:
        for turn, gen in enumerate(_generated(store, record.session_id), start=1):
            trace = decode(store.backend.get(user.trace_key(record.session_id, turn)), RetrievalTrace)
            assert len(trace.chosen) <= policy.list_size and len(trace.bypassed) <= policy.max_global
            assert len(gen.notes) == len(trace.chosen) + len(trace.bypassed)
            assert set(gen.notes) <= notes
    assert not store.backend.exists(user.vector_key)


def test_rag_vector_gets_the_preferences_and_learns(world):
    _, store, profile, lanes = world
    user = store.user(lane_user_id("rt", "rag_vector", profile.profile_id))
    later = [gen for r in lanes["rag_vector"][1:] for gen in _generated(store, r.session_id)]
    assert any(gen.notes for gen in later)
    vector = user.vector(256)
    assert vector.updates > 0
    assert np.linalg.norm(vector.z_long) > 0
    assert sum(r.updates_applied for r in lanes["rag_vector"]) == vector.updates
    # Its lists are served greedy (epsilon 0) and still learned from, with pi over the
    # candidates and the learned term's slope recorded for the update.
    record = lanes["rag_vector"][-1]
    trace = decode(store.backend.get(user.trace_key(record.session_id, 1)), RetrievalTrace)
    assert not trace.sampled and abs(sum(trace.probs) - 1) < 1e-5
    assert len(trace.slopes) == len(trace.candidate_ids) and any(trace.slopes)


def test_a_session_reset_zeroes_z_short_but_keeps_z_long(world):
    engine, store, profile, lanes = world
    from vars_core.runner import new_session
    from vars_core.stages import start_session

    user = store.user(lane_user_id("rt", "rag_vector", profile.profile_id))
    before = user.vector(256)
    state = new_session("rt", profile, "rag_vector", SESSIONS + 1, load_problems(["mmlu"]), 3, 8)
    start_session(engine, store, state)
    after = user.vector(256)
    assert after.z_long == before.z_long
    assert not any(after.z_short)


def test_same_seed_same_transcripts(world):
    engine, _, profile, lanes = world
    other = StateStore()
    again = run_lane(engine, other, "rt", profile, "rag_vector", 2, load_problems(["math-500", "logiqa", "mmlu"]), 3, 8)
    _, store, _, _ = world
    for record in again:
        assert [m.content for m in other.messages(record.session_id)] == [
            m.content for m in store.messages(record.session_id)
        ]


@pytest.mark.parametrize("method", ["all_memory", "rag_vector"])
def test_another_campaign_with_the_same_seed_gives_the_same_sessions(world, method):
    engine, store, profile, lanes = world
    other = StateStore()
    again = run_lane(engine, other, "another-id", profile, method, 2, load_problems(["math-500", "logiqa", "mmlu"]), 3, 8)
    for first, second in zip(lanes[method][:2], again, strict=True):
        assert [m.content for m in store.messages(first.session_id)] == [
            m.content for m in other.messages(second.session_id)
        ]
        assert (first.enforcements, first.turns, first.success) == (second.enforcements, second.turns, second.success)
