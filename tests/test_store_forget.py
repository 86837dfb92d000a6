"""Forgetting one card in the store layer, on the in-memory backend: the card, the older
versions it superseded, their embeddings and the traces that hold them go; nothing else."""

from __future__ import annotations

import pytest

from vars_core import PersonalizedLLM
from vars_core.embedder import default_embedder
from vars_core.store.state import decode
from vars_core.types import RetrievalTrace

SNAKE = "When writing python code, use snake_case names."
CAMEL = "When writing python code, use camelCase names."
DOCTOR = "When answering a medical question, remind me to consult a doctor."


@pytest.fixture
def llm() -> PersonalizedLLM:
    facade = PersonalizedLLM.from_config()
    facade.engine._embedder = default_embedder()
    return facade


def _traces(llm: PersonalizedLLM, user_id: str) -> list[RetrievalTrace]:
    user = llm.store.user(user_id)
    return [decode(llm.store.backend.get(key), RetrievalTrace) for key in user.trace_keys()]


def test_forgetting_a_card_takes_its_versions_vectors_and_traces(llm):
    llm.chat("ann", f"{SNAKE} {DOCTOR} Sort a list?")
    llm.reset_session("ann")
    llm.chat("ann", f"{CAMEL} Reverse a list?")  # supersedes SNAKE (same condition)
    llm.chat("ann", "Writing python code: name a helper?")
    user = llm.store.user("ann")
    cards = {c.note: c.card_id for c in user.cards(include_superseded=True).values()}
    assert set(cards) == {SNAKE, CAMEL, DOCTOR}
    assert user.cards(include_superseded=True)[cards[SNAKE]].superseded_by == cards[CAMEL]
    assert any(cards[CAMEL] in t.candidate_ids for t in _traces(llm, "ann"))
    version = user.version()

    deleted = user.forget_card(cards[CAMEL])
    assert deleted == sorted([cards[CAMEL], cards[SNAKE]])
    assert set(user.cards(include_superseded=True)) == {cards[DOCTOR]}
    assert set(user.embeddings()) == {cards[DOCTOR]}
    assert all(not set(deleted) & set(t.candidate_ids) for t in _traces(llm, "ann"))
    assert user.version() == version + 1  # no cached index keeps the deleted card
    assert user.forget_card(cards[CAMEL]) == []  # gone already


def test_forgetting_is_confined_to_the_user(llm):
    llm.chat("ben", f"{DOCTOR} What helps a cold?")
    llm.chat("cat", f"{DOCTOR} What helps a cold?")
    ben_card = next(iter(llm.store.user("ben").cards()))
    assert llm.store.user("cat").forget_card(ben_card) == []  # not cat's card: nothing happens
    assert ben_card in llm.store.user("ben").cards()
    assert llm.store.user("ben").forget_card(ben_card) == [ben_card]
    assert len(llm.store.user("cat").cards()) == 1
