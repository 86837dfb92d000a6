"""Memory hygiene: extracted preferences -> a plan of card writes, as plain functions.

``plan_merge`` decides, with no store I/O, what each extracted preference does to the
user's active cards (DESIGN §4):

1. the same note (normalized-text hash) -> merge into the existing card;
2. the same condition (normalized, or condition cosine >= ``cfg.supersede_cosine``):
   - the same action (normalized, or a paraphrase: action cosine >= ``ACTION_SAME_COSINE``
     with the same polarity and numbers) -> merge;
   - actions that conflict (the ``conflicts`` check: "short answers" then "actually, long
     detailed answers") -> the new card supersedes the old one (preference drift): the old
     card is kept with ``superseded_by`` set, so the history stays auditable;
   - actions that do not conflict ("numbered steps" and "short answers") -> both kept: the
     same condition is not a conflict;
3. a near-identical note (cosine >= ``cfg.dedup_cosine``, same polarity and numbers) under a
   differently worded condition -> merge;
4. otherwise a new card. Cards with different conditions and conflicting actions are both
   kept: choosing between them is the policy's job.

A merge keeps the existing card and raises its confidence to the max of the two. Over the
cap ``cfg.max_cards`` the lowest-confidence, then oldest, active cards are evicted by marking
them ``superseded_by = EVICTED`` (kept, like superseded cards, so an eviction is auditable
and reversible; retrieval ignores them). Cards touched by this batch go last.

``merge_ops`` turns a plan into the user scope's store ops.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import msgspec
import numpy as np

from vars_core.config import MemoryConfig
from vars_core.conflicts import ConflictCheck, table_conflict
from vars_core.notes import format_note, normalize, text_hash
from vars_core.store import Op, PartitionError, UserScope
from vars_core.types import Card, CardEmbedding, ExtractedPreference

EVICTED = "evicted:cap"

# Two actions under one condition are "the same" at this cosine. MiniLM gives ~0.92 for a
# restated paraphrase ("show every derivation step" / "show all the derivation steps") but
# also 0.86 for "use a formal tone" / "use an informal tone", so 0.85 would drop a real
# change. A missed paraphrase only supersedes (one active card either way); a false match
# loses the user's new preference, so the threshold errs high.
ACTION_SAME_COSINE = 0.9

# Embeddings barely see negation or numbers ("use bullet points" / "do not use bullet
# points": 0.92; "at most 100 words" / "at most 200 words": 0.87), so texts that differ in
# either are never the same, whatever their cosine.
_NEGATION = re.compile(r"\b(?:not|no|never|none|nor|without|avoid|stop)\b|n'?t\b", re.I)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_TRAILING_PUNCT = " \t,.;:!?"


class CardWrite(msgspec.Struct, frozen=True):
    """One card to put; ``embedding`` is None when only the card record changes."""

    card: Card
    embedding: CardEmbedding | None = None


class MergePlan(msgspec.Struct, frozen=True):
    writes: list[CardWrite]
    added: list[str]
    merged: list[str]
    superseded: list[str]
    evicted: list[str]
    # Per extracted preference, the card it became or merged into ("" when it was dropped).
    cards: list[str] = []

    @property
    def changed(self) -> bool:
        return bool(self.writes)


def card_id_for(user_id: str, note: str) -> str:
    """Deterministic per user and normalized note: a restated note maps to the same card."""
    return "c" + hashlib.sha1(f"{user_id}\x00{text_hash(note)}".encode()).hexdigest()[:16]


def make_card(user_id: str, pref: ExtractedPreference, created_at: str) -> Card:
    condition = pref.condition.strip().rstrip(_TRAILING_PUNCT).strip()
    action = pref.action.strip().rstrip(_TRAILING_PUNCT).strip()
    note = format_note(condition, action)
    return Card(
        card_id=card_id_for(user_id, note),
        user_id=user_id,
        condition=condition,
        action=action,
        note=note,
        confidence=pref.confidence,
        created_at=created_at,
    )


def same_meaning_markers(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` agree in polarity and in the numbers they mention."""
    return bool(_NEGATION.search(a)) == bool(_NEGATION.search(b)) and sorted(
        _NUMBER.findall(a)
    ) == sorted(_NUMBER.findall(b))


def plan_merge(
    user_id: str,
    existing: dict[str, Card],
    existing_emb: dict[str, CardEmbedding],
    extracted: list[ExtractedPreference],
    embed: Callable[[list[str]], np.ndarray],
    project: Callable[[np.ndarray], np.ndarray],
    projection_version: str,
    cfg: MemoryConfig,
    created_at: str,
    conflicts: ConflictCheck | None = None,
) -> MergePlan:
    """The card writes that merge ``extracted`` into the user's active cards.

    ``conflicts(old_action, new_action)`` decides whether two different actions under one
    condition conflict (the new card supersedes) or can both be followed (both kept); None
    means the generic table (``vars_core.conflicts``). Embeddings cannot tell the two cases
    apart ("show every derivation step" vs "write the math in latex": 0.15, compatible;
    vs "skip the working and state only the result": 0.24, a conflict), so the decision
    reads the actions.
    """
    conflicts = conflicts or table_conflict
    for card in existing.values():
        if card.user_id != user_id:
            raise PartitionError(f"card {card.card_id!r} is not a card of user {user_id!r}")
    active = {cid: card for cid, card in existing.items() if card.superseded_by is None}
    vectors = _Vectors(embed, existing_emb)
    new_embs: dict[str, CardEmbedding] = {}
    dirty: dict[str, Card] = {}  # card_id -> card to write
    added: list[str] = []
    merged: list[str] = []
    superseded: list[str] = []
    touched: list[str] = []  # added or merged by this batch, protected from eviction first
    cards: list[str] = []

    for pref in extracted:
        new = make_card(user_id, pref, created_at)
        if not new.condition or not new.action:
            cards.append("")
            continue
        target = _find_merge_target(new, active, vectors, cfg)
        if target is not None:
            old = active[target]
            if new.confidence > old.confidence:
                active[target] = dirty[target] = msgspec.structs.replace(
                    old, confidence=new.confidence
                )
            merged.append(target)
            touched.append(target)
            cards.append(target)
            continue
        for cid in _same_condition(new, active, vectors, cfg):
            if not conflicts(active[cid].action, new.action):
                continue
            dirty[cid] = msgspec.structs.replace(active.pop(cid), superseded_by=new.card_id)
            superseded.append(cid)
        active[new.card_id] = dirty[new.card_id] = new
        new_embs[new.card_id] = _card_embedding(new, vectors, project, projection_version)
        added.append(new.card_id)
        touched.append(new.card_id)
        cards.append(new.card_id)

    evicted = _over_cap(active, touched, cfg.max_cards)
    for cid in evicted:
        dirty[cid] = msgspec.structs.replace(active.pop(cid), superseded_by=EVICTED)

    writes = [CardWrite(card, new_embs.get(cid)) for cid, card in dirty.items()]
    return MergePlan(
        writes=writes,
        added=added,
        merged=list(dict.fromkeys(merged)),
        superseded=superseded,
        evicted=evicted,
        cards=cards,
    )


def merge_ops(scope: UserScope, plan: MergePlan) -> list[Op]:
    """Store ops for a plan: every card write, then one version bump and its change log
    entry if anything changed (retrieval updates a cached index when the version moves)."""
    ops: list[Op] = []
    for write in plan.writes:
        ops.extend(scope.put_card_ops(write.card, write.embedding))
    if plan.changed:
        ops += scope.bump_version_ops([write.card.card_id for write in plan.writes])
    return ops


# --------------------------------------------------------------------------- matching


class _Vectors:
    """Note, condition and action embeddings, from the stored ones where they exist and
    computed (the embedder caches by text) where they do not."""

    def __init__(
        self, embed: Callable[[list[str]], np.ndarray], stored: dict[str, CardEmbedding]
    ) -> None:
        self._embed = embed
        self._stored = stored
        self._texts: dict[str, np.ndarray] = {}

    def text(self, text: str) -> np.ndarray:
        if text not in self._texts:
            self._texts[text] = np.asarray(self._embed([text])[0], dtype=np.float32)
        return self._texts[text]

    def note(self, card: Card) -> np.ndarray:
        stored = self._stored.get(card.card_id)
        return np.asarray(stored.note, np.float32) if stored else self.text(card.note)

    def condition(self, card: Card) -> np.ndarray:
        stored = self._stored.get(card.card_id)
        return np.asarray(stored.condition, np.float32) if stored else self.text(card.condition)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)  # embeddings are unit-norm


def _same_condition(
    new: Card, active: dict[str, Card], vectors: _Vectors, cfg: MemoryConfig
) -> list[str]:
    cond = normalize(new.condition)
    new_vec = vectors.text(new.condition)
    return [
        cid
        for cid, card in active.items()
        if normalize(card.condition) == cond
        or _cosine(new_vec, vectors.condition(card)) >= cfg.supersede_cosine
    ]


def _same_action(a: str, b: str, vectors: _Vectors) -> float | None:
    """The action cosine when ``a`` and ``b`` mean the same, else None."""
    if normalize(a) == normalize(b):
        return 1.0
    if not same_meaning_markers(a, b):
        return None
    cos = _cosine(vectors.text(a), vectors.text(b))
    return cos if cos >= ACTION_SAME_COSINE else None


def _find_merge_target(
    new: Card, active: dict[str, Card], vectors: _Vectors, cfg: MemoryConfig
) -> str | None:
    """The active card that ``new`` duplicates or paraphrases, or None."""
    note_hash = text_hash(new.note)
    for cid, card in active.items():
        if text_hash(card.note) == note_hash:
            return cid
    same_condition = _same_condition(new, active, vectors, cfg)
    scored = [
        (score, cid)
        for cid in same_condition
        if (score := _same_action(new.action, active[cid].action, vectors)) is not None
    ]
    if scored:
        return max(scored)[1]
    new_note = vectors.text(new.note)
    near = [
        (cos, cid)
        for cid, card in active.items()
        if cid not in same_condition
        and (cos := _cosine(new_note, vectors.note(card))) >= cfg.dedup_cosine
        and same_meaning_markers(new.action, card.action)
    ]
    return max(near)[1] if near else None


def _card_embedding(
    card: Card,
    vectors: _Vectors,
    project: Callable[[np.ndarray], np.ndarray],
    projection_version: str,
) -> CardEmbedding:
    note = vectors.text(card.note)
    item = np.asarray(project(note), dtype=np.float32).reshape(-1)
    return CardEmbedding(
        note=note.tolist(),
        condition=vectors.text(card.condition).tolist(),
        item=item.tolist(),
        projection_version=projection_version,
    )


# --------------------------------------------------------------------------- cap


def _natural_key(stamp: str) -> tuple:
    """Orders "9:2" before "10:1": digit runs compare as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", stamp))


def _over_cap(active: dict[str, Card], touched: list[str], cap: int) -> list[str]:
    """Active cards to evict so at most ``cap`` remain: untouched cards first, lowest
    confidence then oldest; this batch's cards only if the batch alone exceeds the cap."""
    excess = len(active) - max(cap, 0)
    if excess <= 0:
        return []
    recent = set(touched)
    older = sorted(
        (c for cid, c in active.items() if cid not in recent),
        key=lambda c: (c.confidence, _natural_key(c.created_at), c.card_id),
    )
    batch = [cid for cid in dict.fromkeys(touched) if cid in active]
    return ([c.card_id for c in older] + batch)[:excess]
