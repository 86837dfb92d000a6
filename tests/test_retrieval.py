"""The projection, per-user FAISS retrieval with the real MiniLM embedder, the index cache."""

from __future__ import annotations

import threading

import msgspec
import numpy as np
import pytest

from vars_core.config import PolicyConfig
from vars_core.embedder import default_embedder
from vars_core.notes import format_note
from vars_core.projection import Projection, random_projection
from vars_core.retrieval import (
    IndexCache,
    UserIndex,
    active_note_embeddings,
    cosine_log_p,
    dense_candidates,
    retrieve,
)
from vars_core.types import Card, CardEmbedding, UserVector

# --------------------------------------------------------------------------- projection


def test_random_projection_has_orthonormal_rows_and_is_pinned():
    p = random_projection()
    assert p.version == "rand-384x256-s0" and p.matrix.shape == (256, 384)
    assert p.matrix.dtype == np.float32 and not p.mean.any()
    np.testing.assert_allclose(p.matrix @ p.matrix.T, np.eye(256), atol=1e-5)
    # the same numbers on every machine: PCG64 stream, QR signs fixed
    np.testing.assert_allclose(
        p.matrix[0, :4], [0.00672237, -0.03569898, -0.02908358, -0.04040317], atol=1e-6
    )
    np.testing.assert_allclose(
        random_projection(8, 3, 7).matrix[0, :3],
        [5.32028847e-04, -3.85171950e-01, 2.60114986e-02],
        atol=1e-6,
    )


def test_random_projection_is_cached_and_seeded():
    assert random_projection(384, 256, 0) is random_projection(384, 256, 0)
    other = random_projection(384, 256, 1)
    assert other.version == "rand-384x256-s1"
    assert not np.allclose(other.matrix, random_projection().matrix)
    with pytest.raises(ValueError):
        random_projection(4, 8)


def test_project_subtracts_the_mean_for_one_vector_or_a_batch():
    p = Projection(
        "t",
        np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=np.float32),
        np.array([1.0, 1.0, 1.0], dtype=np.float32),
    )
    np.testing.assert_allclose(p.project(np.array([3.0, 5.0, 4.0])), [2.0, 6.0])
    out = p.project(np.array([[3.0, 5.0, 4.0], [1.0, 1.0, 1.0]]))
    assert out.shape == (2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], [0.0, 0.0])
    with pytest.raises(ValueError):
        p.project(np.zeros(4))


# --------------------------------------------------------------------------- FAISS

NOTES = {
    "fmt-bullets": ("listing things for me", "use bullet points"),
    "py-snake": ("writing Python code", "name variables in snake_case"),
    "math-steps": ("solving a math problem", "show every step of the derivation"),
    "email-formal": ("writing an email", "use a formal, professional tone"),
    "sql-plan": ("I ask about SQL", "include the query plan"),
    "med-doctor": ("answering medical questions", "remind me to see a doctor"),
    "books-author": ("recommending books", "include the author and year"),
    "translate-orig": ("translating text", "keep the original next to the translation"),
}

QUERIES = {
    "Write a Python function that reverses a linked list.": "py-snake",
    "Solve this math problem: 2x - 4 = 10.": "math-steps",
    "Draft an email to my manager asking for a day off.": "email-formal",
    "Why is my SQL query with three joins so slow?": "sql-plan",
    "I have a headache and a fever, what could it be?": "med-doctor",
    "Can you recommend some good science fiction books?": "books-author",
    "Translate this paragraph into German for me.": "translate-orig",
}


@pytest.fixture(scope="module")
def store():
    embedder = default_embedder()
    ids = list(NOTES)
    note = embedder.embed([format_note(*NOTES[c]) for c in ids])
    cond = embedder.embed([NOTES[c][0] for c in ids])
    proj = random_projection()
    items = proj.project(note)
    cards = {c: Card(c, "u1", *NOTES[c], note=format_note(*NOTES[c])) for c in ids}
    emb = {
        c: CardEmbedding(note[i].tolist(), cond[i].tolist(), items[i].tolist(), proj.version)
        for i, c in enumerate(ids)
    }
    return cards, emb, proj


def test_dense_top_k_finds_the_right_card(store):
    cards, emb, _ = store
    index = UserIndex(active_note_embeddings(cards, emb))
    queries = default_embedder().embed(list(QUERIES))
    for (text, want), q in zip(QUERIES.items(), queries, strict=True):
        ids, cos = dense_candidates(index, q, 3)
        assert ids[0] == want, text
        assert len(ids) == 3 and np.all(np.diff(cos) <= 1e-6)
        np.testing.assert_allclose(cos[0], np.dot(emb[want].note, q), atol=1e-5)


def test_top_k_beyond_the_store_and_an_empty_index(store):
    cards, emb, _ = store
    index = UserIndex(active_note_embeddings(cards, emb))
    q = default_embedder().embed(["anything"])[0]
    ids, _ = dense_candidates(index, q, 64)
    assert sorted(ids) == sorted(cards)
    empty = UserIndex({}, dim=384)
    assert dense_candidates(empty, q, 5)[0] == [] and len(empty) == 0


def test_superseded_cards_are_not_indexed(store):
    cards, emb, _ = store
    old = cards["fmt-bullets"]
    cards = dict(cards, **{"fmt-bullets": msgspec.structs.replace(old, superseded_by="x")})
    assert "fmt-bullets" not in active_note_embeddings(cards, emb)


def test_without_a_reranker_s0_is_the_log_of_the_mapped_cosine():
    np.testing.assert_allclose(
        cosine_log_p(np.array([-1.0, 0.0, 0.5, 1.0000001])),
        [np.log(1e-6), np.log(0.5), np.log(0.75), 0.0],
    )


def test_retrieve_uses_the_stored_item_vectors(store):
    cards, emb, proj = store
    # stored item vectors that are NOT the projection of the note: retrieval must not recompute
    rng = np.random.default_rng(0)
    fake = {
        c: CardEmbedding(e.note, e.condition, rng.normal(size=256).tolist(), proj.version)
        for c, e in emb.items()
    }
    foreign = CardEmbedding(emb["sql-plan"].note, emb["sql-plan"].condition, [9.0] * 256, "pca-old")
    fake["sql-plan"] = foreign
    index = UserIndex(active_note_embeddings(cards, fake))
    q = default_embedder().embed(["Write a Python function that reverses a linked list."])[0]
    cfg = PolicyConfig(top_k_dense=6, list_size=3)
    vec = UserVector([0.01] * 256, [0.0] * 256, projection_version=proj.version)
    trace = retrieve("u1", q, index, fake, vec, cfg, np.random.default_rng(1), True, proj.version)
    assert len(trace.candidate_ids) == 6 and not trace.sampled and len(trace.chosen) == 3
    for cid, item in zip(trace.candidate_ids, trace.item_vectors, strict=True):
        want = [0.0] * 256 if cid == "sql-plan" else fake[cid].item  # other projection: zero
        np.testing.assert_allclose(item, want)
    ids, cos = dense_candidates(index, q, 6)
    assert trace.candidate_ids == ids
    np.testing.assert_allclose(trace.base_scores, np.log((1 + cos) / 2), atol=1e-6)


def test_retrieve_greedy_without_learning(store):
    cards, emb, proj = store
    index = UserIndex(active_note_embeddings(cards, emb))
    q = default_embedder().embed(["Solve this math problem: 2x - 4 = 10."])[0]
    trace = retrieve(
        "u1",
        q,
        index,
        emb,
        None,
        PolicyConfig(list_size=2),
        np.random.default_rng(0),
        False,
        proj.version,
    )
    assert not trace.sampled and trace.chosen == [0, 1]
    assert trace.candidate_ids[0] == "math-steps"


def test_global_cards_bypass_ranking_and_follow_the_ranked_ones(store):
    cards, emb, proj = store
    general = {
        "g-short": ("answering any question", "keep it short"),
        "g-tone": ("replying to me in general", "keep the tone friendly"),
        "g-always": ("you always answer", "cite a source"),
        "not-global": ("giving a general knowledge answer", "add one line of background"),
    }
    embedder = default_embedder()
    extra_cards, extra_emb = dict(cards), dict(emb)
    for i, (cid, (cond, act)) in enumerate(general.items()):
        note = format_note(cond, act)
        n, c = embedder.embed([note, cond])
        extra_cards[cid] = Card(cid, "u1", cond, act, note=note, created_at=f"{i}")
        extra_emb[cid] = CardEmbedding(n.tolist(), c.tolist(), proj.project(n).tolist(), proj.version)
    index = UserIndex.from_cards(extra_cards, extra_emb, "condition")
    q = embedder.embed(["Write a Python function that reverses a linked list."])[0]
    cfg = PolicyConfig(list_size=3, max_global=2)
    trace = retrieve("u1", q, index, None, None, cfg, np.random.default_rng(0), False, proj.version)
    # the two newest global cards skip ranking; the third competes like any other card
    assert trace.bypassed == ["g-always", "g-tone"]
    assert not set(trace.bypassed) & set(trace.candidate_ids)
    assert "g-short" in trace.candidate_ids and "not-global" in trace.candidate_ids
    assert len(trace.chosen) == 3
    off = retrieve("u1", q, index, None, None, PolicyConfig(list_size=3, global_bypass=False),
                   np.random.default_rng(0), False, proj.version)
    assert off.bypassed == [] and len(off.candidate_ids) == len(extra_cards)


@pytest.mark.parametrize(
    ("condition", "is_global_"),
    [
        ("answering any request", True),
        ("answering any question", True),
        ("you always answer", True),
        ("writing every reply", True),
        ("replying to me in general", True),
        ("answering a general knowledge question", False),
        ("answering anything about python", False),
        ("writing any python code", False),
        ("solving a math problem", False),
    ],
)
def test_the_global_classifier_reads_whole_phrases(condition, is_global_):
    from vars_core.global_prefs import is_global

    assert is_global(condition) is is_global_


# --------------------------------------------------------------------------- cache


def _loader(calls: list[str], user: str, n: int = 3):
    def load() -> dict[str, np.ndarray]:
        calls.append(user)
        rng = np.random.default_rng(len(calls))
        rows = rng.normal(size=(n, 8)).astype(np.float32)
        return {f"{user}-{i}": r / np.linalg.norm(r) for i, r in enumerate(rows)}

    return load


def test_cache_reuses_while_the_version_is_unchanged():
    cache, calls = IndexCache(), []
    a = cache.get("u1", 1, _loader(calls, "u1"))
    b = cache.get("u1", 1, _loader(calls, "u1"))
    assert a is b and calls == ["u1"] and cache.hits == 1
    c = cache.get("u1", 2, _loader(calls, "u1", n=4))
    assert c is not a and len(c) == 4 and c.version == 2 and calls == ["u1", "u1"]
    assert cache.get("u1", 2, _loader(calls, "u1")) is c


def test_cache_is_a_bounded_lru():
    cache, calls = IndexCache(max_users=2), []
    cache.get("u1", 0, _loader(calls, "u1"))
    cache.get("u2", 0, _loader(calls, "u2"))
    cache.get("u1", 0, _loader(calls, "u1"))  # u1 now most recent
    cache.get("u3", 0, _loader(calls, "u3"))  # evicts u2
    assert len(cache) == 2 and "u1" in cache and "u3" in cache and "u2" not in cache
    cache.get("u2", 0, _loader(calls, "u2"))
    assert calls == ["u1", "u2", "u3", "u2"]
    cache.invalidate("u3")
    assert "u3" not in cache


def test_cache_is_safe_under_threads():
    cache, calls = IndexCache(max_users=4), []
    errors: list[Exception] = []

    def work(i: int) -> None:
        try:
            for step in range(50):
                user = f"u{(i + step) % 6}"
                idx = cache.get(user, step // 10, _loader(calls, user))
                assert all(cid.startswith(user + "-") for cid in idx.card_ids)
        except Exception as exc:  # a worker thread's failure must reach the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) <= 4
