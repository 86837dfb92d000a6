"""The retrieve stage's index: a cached index answers a query with no card read, and a
version bump patches it with only the cards the change log names."""

from __future__ import annotations

from collections import Counter

import msgspec
import numpy as np
import pytest

from vars_core.config import PolicyConfig
from vars_core.retrieval import IndexCache, UserIndex, active_embeddings, retrieve
from vars_core.stages.retrieve import user_index
from vars_core.store import StateStore
from vars_core.store.backend import MemoryBackend, Op
from vars_core.types import Card, CardEmbedding, UserVector

USER = "u1"
DIM, ITEM_DIM = 8, 4


class CountingBackend(MemoryBackend):
    """Counts reads: which methods ran, and how many hash fields HMGET asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.fields: list[str] = []

    def get(self, key):
        self.calls["get"] += 1
        return super().get(key)

    def hgetall(self, key):
        self.calls["hgetall"] += 1
        return super().hgetall(key)

    def hmget(self, key, fields):
        self.calls["hmget"] += 1
        self.fields += fields
        return super().hmget(key, fields)

    def lrange(self, key, start=0, end=-1):
        self.calls["lrange"] += 1
        return super().lrange(key, start, end)

    def reset(self) -> None:
        self.calls.clear()
        self.fields.clear()


def _unit(v: np.ndarray) -> list[float]:
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def _card(i: int, projection: str = "p1", **changes) -> tuple[Card, CardEmbedding]:
    rng = np.random.default_rng(i)
    card = Card(f"c{i:03d}", USER, f"condition {i}", f"action {i}", f"When condition {i}, action {i}.", 0.9)
    emb = CardEmbedding(
        _unit(rng.normal(size=DIM)), _unit(rng.normal(size=DIM)),
        rng.normal(size=ITEM_DIM).astype(np.float32).tolist(), projection,
    )
    return msgspec.structs.replace(card, **changes), emb


@pytest.fixture
def store() -> StateStore:
    store = StateStore(CountingBackend())
    user = store.user(USER)
    ops: list[Op] = []
    for i in range(20):
        ops += user.put_card_ops(*_card(i))
    store.backend.apply([*ops, *user.bump_version_ops([f"c{i:03d}" for i in range(20)])])
    return store


def _write(store: StateStore, writes: list[tuple[Card, CardEmbedding | None]]) -> None:
    user = store.user(USER)
    ops = [op for card, emb in writes for op in user.put_card_ops(card, emb)]
    store.backend.apply([*ops, *user.bump_version_ops([card.card_id for card, _ in writes])])


def _full(store: StateStore, match_on: str = "condition") -> UserIndex:
    user = store.user(USER)
    cards = user.cards()
    return UserIndex.from_cards(cards, user.embeddings(), match_on, user.version())


def _same(a: UserIndex, b: UserIndex) -> None:
    assert a.card_ids == b.card_ids and a.notes == b.notes and a.version == b.version
    assert a.created == b.created
    np.testing.assert_array_equal(a.global_mask, b.global_mask)
    np.testing.assert_array_equal(a._matrix(), b._matrix())
    assert a.items.keys() == b.items.keys()
    for pv in a.items:
        np.testing.assert_array_equal(a.items[pv], b.items[pv])


def test_a_cached_index_answers_with_one_read_and_the_same_trace(store):
    user, cache = store.user(USER), IndexCache()
    index = user_index(cache, user, "condition")
    store.backend.reset()
    assert user_index(cache, user, "condition") is index
    assert store.backend.calls == {"get": 1}  # the version; no card, no embedding

    cards, embeddings = user.cards(), user.embeddings()
    legacy = UserIndex(active_embeddings(cards, embeddings, "condition"))
    q = np.asarray(_unit(np.random.default_rng(99).normal(size=DIM)), np.float32)
    vector = UserVector([0.3] * ITEM_DIM, [0.1] * ITEM_DIM, projection_version="p1")
    cfg = PolicyConfig(top_k_dense=8, list_size=3)
    ours = retrieve(USER, q, index, None, vector, cfg, np.random.default_rng(1), True, "p1")
    theirs = retrieve(USER, q, legacy, embeddings, vector, cfg, np.random.default_rng(1), True, "p1")
    assert ours == theirs
    assert index.notes_of(ours.candidate_ids[:2]) == [cards[c].note for c in ours.candidate_ids[:2]]


def test_a_version_bump_patches_the_index_with_only_the_changed_cards(store):
    user, cache = store.user(USER), IndexCache()
    user_index(cache, user, "condition")
    old3, _ = _card(3)
    _write(store, [_card(20), _card(21)])  # two new cards
    _write(store, [(msgspec.structs.replace(old3, superseded_by="c020"), None)])  # drift
    _write(store, [(msgspec.structs.replace(_card(5)[0], confidence=1.0), None)])  # a merge
    user.forget_card("c007")  # deleted for good
    store.backend.reset()
    patched = user_index(cache, user, "condition")
    assert store.backend.calls["hgetall"] == 0
    assert sorted(set(store.backend.fields)) == ["c003", "c005", "c007", "c020", "c021"]
    _same(patched, _full(store))
    assert "c003" not in patched.card_ids and "c007" not in patched.card_ids
    assert {"c020", "c021"} <= set(patched.card_ids)
    assert patched.log_length == store.backend.llen(user.changes_key)


def test_a_patch_keeps_which_cards_are_global(store):
    user, cache = store.user(USER), IndexCache()
    user_index(cache, user, "condition")
    general = [_card(60, condition="answering any question", created_at="000002.0001"),
               _card(61, condition="replying to me in general", created_at="000003.0001")]
    _write(store, general)
    _write(store, [(msgspec.structs.replace(_card(4)[0], condition="answering any request"), None)])
    patched = user_index(cache, user, "condition")
    _same(patched, _full(store))
    assert [patched.card_ids[i] for i in patched.global_positions(10)] == ["c061", "c060", "c004"]
    assert [patched.card_ids[i] for i in patched.global_positions(1)] == ["c061"]  # newest first


def test_a_bump_the_change_log_cannot_account_for_rebuilds_in_full(store):
    user, cache = store.user(USER), IndexCache()
    user_index(cache, user, "condition")
    # a card written with a bare version bump (no log entry): the log misses a version
    card, emb = _card(30)
    store.backend.apply([*user.put_card_ops(card, emb), user.bump_version_op()])
    store.backend.reset()
    rebuilt = user_index(cache, user, "condition")
    assert store.backend.calls["hgetall"] == 1 and "c030" in rebuilt.card_ids
    # the log reset (as a user reset does), then more writes than it held before
    store.backend.apply([Op("del", user.changes_key), user.bump_version_op()])
    for i in range(40, 43):
        _write(store, [_card(i)])
    store.backend.reset()
    again = user_index(cache, user, "condition")
    assert store.backend.calls["hgetall"] == 1
    _same(again, _full(store))


def test_a_patch_keeps_item_vectors_per_projection_and_only_active_embeddings_are_read(store):
    user, cache = store.user(USER), IndexCache()
    # superseded cards' embeddings are never read: a rebuild reads the active ones only
    _write(store, [(msgspec.structs.replace(_card(i)[0], superseded_by="evicted:cap"), None) for i in range(10)])
    store.backend.reset()
    index = user_index(cache, user, "note")
    assert len(index) == 10 and sorted(store.backend.fields) == [f"c{i:03d}" for i in range(10, 20)]
    _write(store, [_card(50, projection="p2")])
    patched = user_index(cache, user, "note")
    _same(patched, _full(store, "note"))
    pos = np.arange(len(patched))
    new = patched.card_ids.index("c050")
    p1, p2 = patched.item_rows(pos, "p1", 0), patched.item_rows(pos, "p2", 0)
    assert not p1[new].any() and p2[new].any() and not np.delete(p2, new, axis=0).any()
    assert patched.item_rows(pos, "p3", ITEM_DIM).shape == (len(patched), ITEM_DIM)


def test_a_query_runs_faiss_on_the_calling_thread_only(store):
    """FAISS's OpenMP threads stall a one-query scan on busy cores (docs/decisions.md)."""
    import threading

    import faiss

    index = user_index(IndexCache(), store.user(USER), "condition")
    seen: list[int] = []

    def query() -> None:
        faiss.omp_set_num_threads(2)
        index.search_positions(np.ones(DIM, np.float32) / np.sqrt(DIM), 5)
        seen.append(faiss.omp_get_max_threads())

    thread = threading.Thread(target=query)
    thread.start()
    thread.join()
    assert seen == [1]


def test_retrieve_without_embeddings_needs_an_index_that_holds_them(store):
    cards = store.user(USER).cards()
    plain = UserIndex(active_embeddings(cards, store.user(USER).embeddings(), "condition"))
    with pytest.raises(ValueError, match="from_cards"):
        retrieve(USER, np.ones(DIM, np.float32), plain, None, None, PolicyConfig(), np.random.default_rng(0), False, "p1")
