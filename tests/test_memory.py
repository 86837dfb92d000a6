from __future__ import annotations

import msgspec
import numpy as np
import pytest

from vars_core.config import MemoryConfig
from vars_core.embedder import default_embedder
from vars_core.memory import (
    ACTION_SAME_COSINE,
    EVICTED,
    MergePlan,
    make_card,
    merge_ops,
    plan_merge,
)
from vars_core.notes import format_note, parse_notes
from vars_core.projection import random_projection
from vars_core.store import MemoryBackend, PartitionError, StateStore, UserScope
from vars_core.types import ExtractedPreference

DEFAULT_CFG = MemoryConfig()
MATH = "answering a math question"
STEPS = "When answering a math question, show every derivation step."
STEPS_PARAPHRASE = "When answering a math question, show all the derivation steps."


@pytest.fixture(scope="module")
def embedder():
    return default_embedder()


@pytest.fixture(scope="module")
def projection():
    return random_projection(384, 256, seed=0)


@pytest.fixture
def store():
    return StateStore(MemoryBackend())


def cosine(embedder, a: str, b: str) -> float:
    v = embedder.embed([a, b])
    return float(v[0] @ v[1])


def pref(condition: str, action: str, confidence: float = 0.7) -> ExtractedPreference:
    return ExtractedPreference(condition, action, confidence)


def merge(
    scope: UserScope,
    prefs: list[ExtractedPreference],
    embedder,
    projection,
    stamp: str = "000000.0000",
    cfg: MemoryConfig = DEFAULT_CFG,
) -> MergePlan:
    """The extract stage's round trip: read the scope, plan, write the ops."""
    plan = plan_merge(
        scope.user_id,
        scope.cards(),
        scope.embeddings(),
        prefs,
        embed=embedder.embed,
        project=projection.project,
        projection_version=projection.version,
        cfg=cfg,
        created_at=stamp,
    )
    scope.store.backend.apply(merge_ops(scope, plan))
    return plan


def plan_for(
    user_id, existing, prefs, embedder, projection, cfg=DEFAULT_CFG, created_at="1", emb=None
) -> MergePlan:
    """plan_merge on given cards, without a store."""
    return plan_merge(
        user_id,
        existing,
        emb or {},
        prefs,
        embed=embedder.embed,
        project=projection.project,
        projection_version=projection.version,
        cfg=cfg,
        created_at=created_at,
    )


# --------------------------------------------------------------------------- measured cosines


def test_minilm_cosines_the_thresholds_rest_on(embedder):
    """The thresholds are honest only if MiniLM puts these pairs where the rules assume."""
    cfg = MemoryConfig()
    # a paraphrased note sits just above the dedup line ...
    assert cosine(embedder, STEPS, STEPS_PARAPHRASE) >= cfg.dedup_cosine
    # ... and its action clears the action-paraphrase line
    paraphrase = cosine(embedder, "show every derivation step", "show all the derivation steps")
    assert paraphrase >= ACTION_SAME_COSINE
    # a changed action under the same condition is far below it
    changed = cosine(embedder, "show every derivation step", "give only the final answer")
    assert changed < 0.5
    # antonyms and negations look alike to the embedder: the reason for the polarity guard
    # and for ACTION_SAME_COSINE above 0.85
    assert cosine(embedder, "use bullet points", "do not use bullet points") >= ACTION_SAME_COSINE
    assert 0.85 <= cosine(embedder, "use a formal tone", "use an informal tone") < 0.9
    # a reworded condition is the same condition; a different subject is not
    assert cosine(embedder, MATH, "answering a math problem") >= cfg.supersede_cosine
    assert cosine(embedder, MATH, "writing code") < cfg.supersede_cosine


# --------------------------------------------------------------------------- cards


def test_make_card_is_deterministic_per_user_and_normalized_note():
    a = make_card("u1", pref(MATH, "show every derivation step"), "1")
    b = make_card("u1", pref("Answering a MATH question", "show every derivation step."), "2")
    other = make_card("u2", pref(MATH, "show every derivation step"), "1")
    assert a.note == STEPS
    assert parse_notes(a.note) == [(MATH, "show every derivation step")]
    assert a.card_id == b.card_id
    assert a.card_id != other.card_id
    assert a.superseded_by is None


def test_stated_preference_becomes_a_card_with_embeddings(store, embedder, projection):
    scope = store.user("alice")
    plan = merge(scope, [pref(MATH, "show every derivation step", 0.9)], embedder, projection)
    cards = scope.cards()
    assert list(cards) == plan.added and len(plan.added) == 1
    card = cards[plan.added[0]]
    assert card.note == STEPS and card.confidence == 0.9 and card.user_id == "alice"
    emb = scope.embeddings()[card.card_id]
    note_vec = embedder.embed([STEPS])[0]
    np.testing.assert_allclose(emb.note, note_vec, atol=1e-6)
    np.testing.assert_allclose(emb.condition, embedder.embed([MATH])[0], atol=1e-6)
    np.testing.assert_allclose(emb.item, projection.project(note_vec), atol=1e-5)
    assert len(emb.item) == 256 and emb.projection_version == projection.version
    assert scope.version() == 1


def test_paraphrases_of_one_preference_do_not_pile_up(store, embedder, projection):
    scope = store.user("alice")
    first = merge(scope, [pref(MATH, "show every derivation step")], embedder, projection)
    (card_id,) = first.added
    restated = [
        pref(MATH, "show all the derivation steps"),  # STEPS_PARAPHRASE
        pref("Answering a MATH question", "Show every derivation step!"),  # STEPS_RECASED
    ]
    assert format_note(restated[0].condition, restated[0].action) == STEPS_PARAPHRASE
    for i, restatement in enumerate(restated, start=1):
        plan = merge(scope, [restatement], embedder, projection, stamp=f"000001.{i:04d}")
        assert plan.added == [] and plan.superseded == []
        assert plan.merged == [card_id]
        assert not plan.changed  # same confidence: nothing to write
    assert list(scope.cards(include_superseded=True)) == [card_id]
    assert scope.version() == 1


def test_recased_note_is_an_exact_duplicate(store, embedder, projection):
    scope = store.user("alice")
    merge(scope, [pref(MATH, "show every derivation step", 0.6)], embedder, projection)
    plan = merge(
        scope,
        [pref("Answering a math QUESTION", "Show every derivation step!", 0.95)],
        embedder,
        projection,
    )
    (card,) = scope.cards(include_superseded=True).values()
    assert plan.merged == [card.card_id]
    assert card.confidence == 0.95  # a merge raises confidence to the max
    assert card.note == STEPS  # and keeps the existing wording
    assert scope.version() == 2


def test_duplicates_within_one_batch_merge(store, embedder, projection):
    scope = store.user("alice")
    plan = merge(
        scope,
        [
            pref(MATH, "show every derivation step", 0.7),
            pref(MATH, "show all the derivation steps", 0.9),
        ],
        embedder,
        projection,
    )
    assert len(plan.added) == 1 and plan.merged == plan.added
    (card,) = scope.cards().values()
    assert card.confidence == 0.9 and card.action == "show every derivation step"


def test_changed_action_for_the_same_condition_supersedes(store, embedder, projection):
    scope = store.user("alice")
    (old_id,) = merge(scope, [pref(MATH, "show every derivation step")], embedder, projection).added
    plan = merge(
        scope,
        [pref("answering a math problem", "give only the final answer")],
        embedder,
        projection,
        stamp="000002.0001",
    )
    (new_id,) = plan.added
    assert plan.superseded == [old_id]
    assert list(scope.cards()) == [new_id]  # only the new one is active
    every = scope.cards(include_superseded=True)
    assert every[old_id].superseded_by == new_id  # the old one is kept, not deleted
    assert every[new_id].action == "give only the final answer"
    assert old_id in scope.embeddings()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("use bullet points", "do not use bullet points"),  # cosine 0.92: polarity guard
        ("use at most 100 words", "use at most 200 words"),  # cosine 0.87: number guard
        ("use a formal tone", "use an informal tone"),  # cosine 0.86: below 0.9
    ],
)
def test_look_alike_opposite_actions_supersede_not_merge(store, embedder, projection, old, new):
    scope = store.user("alice")
    condition = "answering a question about python programming and software libraries"
    (old_id,) = merge(scope, [pref(condition, old)], embedder, projection).added
    plan = merge(scope, [pref(condition, new)], embedder, projection)
    assert plan.merged == [] and plan.superseded == [old_id]
    assert [c.action for c in scope.cards().values()] == [new]


def test_a_conflicts_predicate_keeps_complementary_actions(embedder, projection):
    condition = "solving a math problem"
    old = make_card("alice", pref(condition, "show every derivation step"), "1")
    plan = plan_merge(
        "alice",
        {old.card_id: old},
        {},
        [
            pref(condition, "write the math in latex"),
            pref(condition, "skip the working and state only the result"),
        ],
        embed=embedder.embed,
        project=projection.project,
        projection_version=projection.version,
        cfg=DEFAULT_CFG,
        created_at="2",
        conflicts=lambda a, b: (
            {a, b} == {"show every derivation step", "skip the working and state only the result"}
        ),
    )
    (latex_id, skip_id) = plan.added
    assert plan.superseded == [old.card_id]  # only the real conflict supersedes
    written = {w.card.card_id: w.card for w in plan.writes}
    assert written[old.card_id].superseded_by == skip_id
    assert written[latex_id].superseded_by is None and written[skip_id].superseded_by is None


def test_restating_an_old_preference_brings_it_back(store, embedder, projection):
    scope = store.user("alice")
    (a,) = merge(scope, [pref(MATH, "show every derivation step")], embedder, projection).added
    (b,) = merge(scope, [pref(MATH, "give only the final answer")], embedder, projection).added
    plan = merge(scope, [pref(MATH, "show every derivation step")], embedder, projection)
    assert plan.added == [a] and plan.superseded == [b]
    assert list(scope.cards()) == [a]
    assert scope.cards(include_superseded=True)[b].superseded_by == a


def test_conflicting_actions_under_different_conditions_are_both_kept(store, embedder, projection):
    scope = store.user("alice")
    plan = merge(
        scope,
        [
            pref("the user asks a quick question", "answer in one sentence"),
            pref("the user asks for an explanation", "answer in full detail with examples"),
            pref("writing Python code", "use snake_case names"),
            pref("writing JavaScript code", "use camelCase names"),
        ],
        embedder,
        projection,
    )
    assert len(plan.added) == 4 and plan.superseded == [] and plan.merged == []
    assert len(scope.cards()) == 4


def test_the_cap_holds_and_evicts_the_weakest_oldest(store, embedder, projection):
    scope = store.user("alice")
    cfg = MemoryConfig(max_cards=3)
    topics = ["chemistry", "history", "poetry", "geology", "economics"]
    confidences = [0.9, 0.7, 0.7, 0.9, 0.9]
    ids = []
    for i, (topic, conf) in enumerate(zip(topics, confidences, strict=True)):
        plan = merge(
            scope,
            [pref(f"discussing {topic}", f"mention one {topic} fact", conf)],
            embedder,
            projection,
            stamp=f"{i + 1:06d}.0000",
            cfg=cfg,
        )
        ids.extend(plan.added)
        assert len(scope.cards()) <= 3
    # history and poetry (0.7) go before the older chemistry (0.9); history is older
    every = scope.cards(include_superseded=True)
    assert set(scope.cards()) == {ids[0], ids[3], ids[4]}
    assert every[ids[1]].superseded_by == EVICTED
    assert every[ids[2]].superseded_by == EVICTED


def test_the_cap_keeps_a_just_stated_low_confidence_card(embedder, projection):
    cfg = MemoryConfig(max_cards=1)
    old = make_card("alice", pref("discussing chemistry", "mention a fact", 0.95), "000001.0000")
    poetry = [pref("discussing poetry", "quote a poem", 0.7)]
    plan = plan_for("alice", {old.card_id: old}, poetry, embedder, projection, cfg, "000002.0000")
    assert plan.evicted == [old.card_id]
    assert len(plan.added) == 1


def test_plan_ignores_inactive_cards_and_rejects_other_users(embedder, projection):
    gone = make_card("alice", pref(MATH, "show every derivation step"), "1")
    gone = msgspec.structs.replace(gone, superseded_by="x")
    final = [pref(MATH, "give only the final answer")]
    plan = plan_for("alice", {gone.card_id: gone}, final, embedder, projection)
    assert plan.superseded == [] and plan.merged == [] and len(plan.added) == 1
    bob_card = make_card("bob", pref(MATH, "x y z"), "1")
    with pytest.raises(PartitionError):
        plan_for("alice", {bob_card.card_id: bob_card}, [], embedder, projection)


def test_users_never_see_each_other_cards(store, embedder, projection):
    alice, bob = store.user("alice"), store.user("bob")
    plan = merge(alice, [pref(MATH, "show every derivation step")], embedder, projection)
    (card_id,) = plan.added
    assert bob.cards(include_superseded=True) == {} and bob.embeddings() == {}
    assert bob.version() == 0
    with pytest.raises(PartitionError):
        bob.cards_by_id([card_id])
    assert [c.card_id for c in alice.cards_by_id([card_id])] == [card_id]
    # bob stating the same preference gets his own card, not alice's
    (bob_id,) = merge(bob, [pref(MATH, "show every derivation step")], embedder, projection).added
    assert bob_id != card_id
    assert list(alice.cards()) == [card_id]
    with pytest.raises(PartitionError):
        merge_ops(bob, plan)  # alice's plan cannot be written through bob's scope


def test_nothing_changed_means_no_ops(store, embedder, projection):
    scope = store.user("alice")
    merge(scope, [pref(MATH, "show every derivation step", 0.9)], embedder, projection)
    weaker = [pref(MATH, "show every derivation step", 0.5)]
    plan = plan_for("alice", scope.cards(), weaker, embedder, projection, emb=scope.embeddings())
    assert plan.merged and merge_ops(scope, plan) == []
    assert format_note(MATH, "show every derivation step") == STEPS


# --------------------------------------------------------------------------- conflicts


def _said(scope, text, embedder, projection, stamp):
    from vars_core.extractor import rule_extract
    from vars_core.types import Message

    return merge(scope, rule_extract([Message("user", text)]), embedder, projection, stamp=stamp)


def test_compatible_preferences_under_one_condition_are_both_kept(store, embedder, projection):
    scope = store.user("alice")
    _said(scope, "Please always answer with numbered steps", embedder, projection, "000001.0001")
    plan = _said(scope, "I prefer short answers", embedder, projection, "000001.0002")
    assert plan.superseded == [] and len(plan.added) == 1
    actions = sorted(c.action for c in scope.cards().values())
    assert actions == ["answer with numbered steps", "prefer short answers"]
    assert {c.condition for c in scope.cards().values()} == {"answering any request"}


def test_a_change_of_mind_supersedes_and_the_old_card_stays_visible(store, embedder, projection):
    scope = store.user("alice")
    (steps,) = _said(scope, "Please always answer with numbered steps", embedder, projection, "000001.0001").added
    (short,) = _said(scope, "I prefer short answers", embedder, projection, "000001.0002").added
    plan = _said(scope, "actually, give me long detailed answers", embedder, projection, "000002.0001")
    (long_,) = plan.added
    assert plan.superseded == [short]  # the length changed; the numbered steps did not
    assert sorted(scope.cards()) == sorted([steps, long_])
    every = scope.cards(include_superseded=True)
    assert every[short].superseded_by == long_ and every[short].action == "prefer short answers"


def test_the_plan_says_which_card_each_preference_became(embedder, projection):
    old = make_card("alice", pref(MATH, "show every derivation step"), "1")
    plan = plan_for(
        "alice",
        {old.card_id: old},
        [pref(MATH, "show all the derivation steps"), pref(MATH, ""), pref("writing python code", "use snake_case names")],
        embedder,
        projection,
    )
    assert plan.cards == [old.card_id, "", plan.added[0]]
