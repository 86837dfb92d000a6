"""Session metrics of DESIGN §5 that the record carries: first-reply conflict resolution,
over-personalization, repetition, and task success graded at the end."""

from __future__ import annotations

import pytest

from vars_core.engine import Engine
from vars_core.problems import load_problems
from vars_core.runner import run_lane
from vars_core.scripted.agent import ScriptedAgentParams
from vars_core.scripted.catalog import entry
from vars_core.scripted.context import context_of
from vars_core.scripted.profiles import generate_profiles, triggered_conflicts
from vars_core.scripted.rating import rate_reply
from vars_core.session_metrics import is_repetition
from vars_core.store import StateStore
from vars_core.types import Profile

PROBLEMS = load_problems(["math-500", "logiqa", "mmlu"])


@pytest.fixture(scope="module")
def embedder():
    return Engine().embedder


def test_repetition_is_a_near_copy_of_the_previous_reply():
    reply = (
        "First, I wrote down the quantities the problem gives. Then, I combined them step by "
        "step and checked the units. The two sides balance. **Final answer: 42**"
    )
    assert is_repetition(reply, reply)
    assert is_repetition(reply, reply.replace("balance", "agree"))
    assert not is_repetition(reply, " ".join(reply.split()[:12]))
    assert not is_repetition(reply, "Let me start over with a table of the cases instead.")
    assert not is_repetition("", reply)


def test_a_mark_of_a_preference_whose_condition_fails_is_over_personalization():
    numbered = entry("fmt_numbered")  # holds when the user asks to explain the reasoning
    profile = Profile("p", "A tester.", [numbered.preference()])
    reply = "1. First point\n2. Second point"
    plain = "I'm working on a math problem.\n\nWhat is 2 + 2?"
    asked = "I'm working on a math problem. Please explain your reasoning.\n\nWhat is 2 + 2?"
    assert rate_reply(profile, plain, reply).over_personalized == ["fmt_numbered"]
    assert rate_reply(profile, asked, reply).over_personalized == []
    assert rate_reply(profile, asked, reply).satisfied == {"fmt_numbered": True}
    # Absence of a mark is not a mark: a "do not ..." preference never counts.
    no_headers = entry("fmt_no_headers")
    profile = Profile("p", "A tester.", [no_headers.preference()])
    assert rate_reply(profile, plain, "No headers here.").over_personalized == []


def _lane_records(embedder, method: str, agent: ScriptedAgentParams, profiles: list[Profile]):
    engine = Engine(embedder=embedder, agent_params=agent)
    store = StateStore()
    records = [
        r
        for p in profiles
        for r in run_lane(engine, store, "metrics", p, method, 4, PROBLEMS, 5, 6)
    ]
    return records, store


def test_conflict_accuracy_is_read_once_per_probe_on_the_first_reply(embedder):
    profiles = generate_profiles(8, seed=5)
    records, store = _lane_records(embedder, "rag", ScriptedAgentParams(), profiles)
    by_id = {p.profile_id: p for p in profiles}
    for r in records:
        opening = store.session(r.session_id).opening
        triggered = triggered_conflicts(by_id[r.profile_id], context_of(opening))
        # However many turns the session took, each triggered conflict counts once.
        assert r.conflict_probes == (len(triggered) if r.turns else 0)
        assert r.conflict_correct <= r.conflict_probes
    assert sum(r.conflict_probes for r in records) > 0, "the campaign must hold probes"
    assert any(r.turns > 1 and r.conflict_probes for r in records)


def test_over_personalization_follows_the_agents_misapplication(embedder):
    profiles = generate_profiles(4, seed=6)
    careful, _ = _lane_records(embedder, "all_memory", ScriptedAgentParams(p_misapply=0.0), profiles)
    leaky, _ = _lane_records(embedder, "all_memory", ScriptedAgentParams(p_misapply=1.0), profiles)
    vanilla, _ = _lane_records(embedder, "vanilla", ScriptedAgentParams(p_misapply=1.0), profiles)
    rate = lambda rs: sum(r.over_personalized_turns for r in rs) / sum(r.rated_turns for r in rs)  # noqa: E731
    assert rate(careful) == 0.0
    assert rate(vanilla) == 0.0  # no notes in the prompt, nothing to misapply
    assert rate(leaky) > 0.3
    for r in careful + leaky:
        assert r.over_personalized_turns <= r.rated_turns <= r.turns
        assert r.repetitions <= max(0, r.turns - 1)
