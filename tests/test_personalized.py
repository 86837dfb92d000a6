"""The library facade on the scripted backend: memory across sessions, resets, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from vars_core import PersonalizedLLM
from vars_core.embedder import default_embedder
from vars_core.engine import Engine
from vars_core.methods import METHODS
from vars_core.personalized import Feedback
from vars_core.store import StateStore

NOTE = "When writing python code, use snake_case names."


@pytest.fixture
def llm() -> PersonalizedLLM:
    facade = PersonalizedLLM.from_config()
    facade.engine._embedder = default_embedder()  # share the loaded model between tests
    return facade


def test_a_stated_preference_reaches_the_prompt_in_a_later_session(llm):
    first = llm.chat("alice", f"{NOTE} How do I reverse a list?")
    assert [(p.condition, p.action) for p in first.debug.extracted] == [("writing python code", "use snake_case names")]
    assert [c.note for c in llm.store.user("alice").cards().values()] == [NOTE]
    llm.reset_session("alice")
    context = llm.chat_prepare("alice", "I am writing python code for a binary search; how should I name things?")
    assert context.debug.cards and context.debug.cards[0].note == NOTE
    assert NOTE in context.messages[0].content  # in the system prompt the agent sees
    result = llm.chat_complete("use snake_case: binary_search(items, target)", context)
    assert result.answer.startswith("use snake_case")
    assert llm.store.messages(context.session_id)[-1].content == result.answer


def test_feedback_moves_the_vector_once(llm):
    # Two cards: with a single candidate the list's gradient is zero by construction.
    llm.chat("bob", f"{NOTE} When answering a medical question, remind me to consult a doctor. Sort a dict?")
    llm.reset_session("bob")
    llm.chat("bob", "Writing python code again: a helper to merge two dicts?")
    before = llm.store.user("bob").vector(256)
    first = llm.apply_feedback(Feedback("bob", reward=1.0))
    assert first.applied
    after = llm.store.user("bob").vector(256)
    assert after.updates == before.updates + 1 and after.z_long != before.z_long
    again = llm.apply_feedback(Feedback("bob", reward=1.0))
    assert not again.applied and "already" in again.reason
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        llm.apply_feedback(Feedback("bob", reward=3.0))


def test_the_judge_learns_from_the_next_message(llm):
    llm.chat("carol", f"{NOTE} Reverse a string?")
    result = llm.chat("carol", "Thanks, that's exactly what I needed.")
    assert result.debug.judge is not None and result.debug.judge.label == "pos_praise"
    assert result.debug.update is not None and result.debug.update.applied
    assert result.debug.vector_after.updates == 1


def test_reset_user_forgets_everything(llm):
    llm.chat("dave", f"{NOTE} Reverse a string?")
    llm.chat("dave", "Thanks, that's exactly what I needed.")
    user = llm.store.user("dave")
    assert user.cards() and llm.store.backend.exists(user.vector_key)
    llm.reset_user("dave")
    assert user.cards() == {} and not llm.store.backend.exists(user.vector_key)
    assert llm.store.backend.scan(user.prefix) == [user.version_key]
    later = llm.chat("dave", "Writing python code: how do I name a helper?")
    assert later.debug.cards == []


def test_save_and_load_round_trip(llm):
    llm.chat("erin", f"{NOTE} Reverse a string?")
    llm.chat("erin", "Thanks, that's exactly what I needed.")
    saved = llm.save_user("erin")
    other = PersonalizedLLM(Engine(embedder=llm.engine.embedder), StateStore())
    other.load_user(saved)
    assert other.store.user("erin").cards() == llm.store.user("erin").cards()
    assert other.store.user("erin").vector(256) == llm.store.user("erin").vector(256)
    with pytest.raises(ValueError, match="not a saved VARS user"):
        other.load_user(b"junk")


def test_users_are_partitioned(llm):
    llm.chat("frank", f"{NOTE} Reverse a string?")
    result = llm.chat("grace", "Writing python code: how do I name a helper?")
    assert result.debug.cards == [] and llm.store.user("grace").cards() == {}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_answers_and_remembers_as_it_should(llm, method):
    user = f"m-{method}"
    llm.chat(user, f"{NOTE} Reverse a string?", method=method)
    llm.reset_session(user)
    context = llm.chat_prepare(user, "Writing python code: how do I name a helper?", method=method)
    system = context.messages[0].content
    remembers = method != "vanilla"
    assert (NOTE in system or "when writing python code, use snake_case names" in system.lower()) == remembers, system
    assert llm.chat_complete("ok", context).answer == "ok"


def test_cold_start_from_the_tenant_mean():
    llm = PersonalizedLLM.from_config({"cold_start": "tenant_mean"})
    llm.engine._embedder = default_embedder()
    llm.chat("acme/ann", f"{NOTE} Reverse a string?")
    llm.chat("acme/ann", "Thanks, that's exactly what I needed.")
    ann = llm.store.user("acme/ann").vector(256)
    assert ann.updates == 1
    llm.chat("acme/ben", "Hello there, a quick question about python.")
    ben = llm.store.user("acme/ben").vector(256)
    assert np.allclose(ben.z_long, ann.z_long)  # the mean of one user is that user
    llm.chat("other/cat", "Hello there.")
    assert not llm.store.backend.exists(llm.store.user("other/cat").vector_key)  # another tenant


def test_bad_input_is_named(llm):
    with pytest.raises(ValueError, match="query is empty"):
        llm.chat("zed", "   ")
    with pytest.raises(ValueError, match="unknown method 'rag3'"):
        llm.chat("zed", "hi", method="rag3")


def test_memory_lists_active_cards_and_on_request_what_replaced_the_others(llm):
    llm.chat("kim", "Please always answer with numbered steps. What is 2 + 2?")
    llm.chat("kim", "I prefer short answers.")
    assert sorted(c.action for c in llm.memory("kim")) == ["answer with numbered steps", "prefer short answers"]
    llm.chat("kim", "Actually, give me long detailed answers.")
    active = llm.memory("kim")
    assert sorted(c.action for c in active) == ["answer with numbered steps", "give me long detailed answers"]
    every = llm.memory("kim", include_superseded=True)
    (old,) = [c for c in every if c.superseded_by is not None]
    assert old.action == "prefer short answers"
    assert old.superseded_by == next(c.card_id for c in active if c.action.startswith("give me long"))
    assert [c.created_at for c in every] == sorted(c.created_at for c in every)  # oldest first
