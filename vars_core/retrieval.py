"""Per-user dense retrieval: a FAISS inner-product index over one user's active cards.

Candidates only ever come from the user's own index (the hard partition). A worker keeps
recently used indexes in an LRU keyed by user and reuses one while the user's store
version is unchanged. An index built from the store also holds its cards' item vectors and
notes, so a query on a cached index reads nothing else; when the version moves, the cached
index is patched with the cards the change log names, or rebuilt when the log cannot say
(``vars_core.stages.retrieve.user_index``).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import faiss
import msgspec
import numpy as np

from vars_core.config import PolicyConfig
from vars_core.global_prefs import is_global
from vars_core.policy import log_probs, select
from vars_core.types import Card, CardEmbedding, RetrievalTrace, UserVector

# (candidate ids, cosines) -> s0 (log P(yes)); a text reranker is bound to this shape by rerankers
Reranker = Callable[[list[str], np.ndarray], np.ndarray]


class UserIndex:
    """FAISS ``IndexIDMap(IndexFlatIP)`` over unit note embeddings; int64 ids are positions
    in ``card_ids`` (sorted, so a rebuild from the same cards gives the same ids).

    Built by ``from_cards`` it also holds, per position, the card's note, item vector
    (float32: the projection writes float32, so the values are the stored ones), creation
    stamp and whether its condition is global, and ``log_length``, how much of the user's
    change log it reflects (``patched`` applies the rest). Never changed once built: a patch
    makes a new index, so threads can share one.
    """

    def __init__(self, embeddings: Mapping[str, np.ndarray], version: int = 0, dim: int = 0):
        card_ids = sorted(embeddings)
        if card_ids:
            matrix = np.stack([np.asarray(embeddings[c], dtype=np.float32) for c in card_ids])
        else:
            matrix = np.zeros((0, dim), dtype=np.float32)
        self._build(card_ids, matrix, version)

    def _build(self, card_ids: list[str], matrix: np.ndarray, version: int) -> None:
        self.version = version
        self.card_ids: list[str] = card_ids
        self.dim = int(matrix.shape[1])
        self.index: faiss.IndexIDMap | None = None
        if self.dim:
            self.index = faiss.IndexIDMap(faiss.IndexFlatIP(self.dim))
            if card_ids:
                self.index.add_with_ids(
                    np.ascontiguousarray(matrix, dtype=np.float32),
                    np.arange(len(card_ids), dtype=np.int64),
                )
        self.notes: list[str] | None = None  # per position; None: not built from cards
        self.created: list[str] = []  # per position: the card's creation stamp
        self.global_mask = np.zeros(len(card_ids), dtype=bool)  # per position: a global card
        self.items: dict[str, np.ndarray] = {}  # projection version -> (n, d) float32
        self.log_length = -1  # change log entries reflected; -1: unknown (no patching)

    @classmethod
    def from_cards(
        cls,
        cards: Mapping[str, Card],
        embeddings: Mapping[str, CardEmbedding],
        match_on: str,
        version: int = 0,
        log_length: int = -1,
    ) -> UserIndex:
        """The index of the active cards among ``cards`` that have an embedding, with their
        notes and item vectors."""
        index = cls(active_embeddings(cards, embeddings, match_on), version)
        index.notes = [cards[cid].note for cid in index.card_ids]
        index.created = [cards[cid].created_at for cid in index.card_ids]
        index.global_mask = np.array([is_global(cards[cid].condition) for cid in index.card_ids], dtype=bool)
        index.items = _item_matrices([embeddings[cid] for cid in index.card_ids])
        index.log_length = log_length
        return index

    def patched(
        self,
        changed: Mapping[str, Card | None],
        embeddings: Mapping[str, CardEmbedding],
        match_on: str,
        version: int,
        log_length: int,
    ) -> UserIndex:
        """A new index: this one with every card in ``changed`` (card id -> its record now,
        None when deleted) re-read from ``changed`` and ``embeddings``; the other cards'
        rows are copied, not read again."""
        if self.notes is None:
            raise ValueError("only an index built by from_cards can be patched")
        keep = [i for i, cid in enumerate(self.card_ids) if cid not in changed]
        live = {cid: card for cid, card in changed.items() if card is not None}
        fresh = active_embeddings(live, embeddings, match_on)
        added = sorted(fresh)
        ids = [self.card_ids[i] for i in keep] + added
        order = sorted(range(len(ids)), key=ids.__getitem__)
        parts = [self._matrix()[keep]] if keep else []
        if added:
            parts.append(np.stack([fresh[cid] for cid in added]))
        matrix = np.concatenate(parts)[order] if parts else np.zeros((0, self.dim), np.float32)
        new = UserIndex.__new__(UserIndex)
        new._build([ids[i] for i in order], matrix, version)
        notes = [self.notes[i] for i in keep] + [live[cid].note for cid in added]
        new.notes = [notes[i] for i in order]
        created = [self.created[i] for i in keep] + [live[cid].created_at for cid in added]
        new.created = [created[i] for i in order]
        mask = [bool(self.global_mask[i]) for i in keep] + [is_global(live[cid].condition) for cid in added]
        new.global_mask = np.array([mask[i] for i in order], dtype=bool)
        added_items = _item_matrices([embeddings[cid] for cid in added])
        for pv in {*self.items, *added_items}:
            old, extra = self.items.get(pv), added_items.get(pv)
            width = old.shape[1] if old is not None else extra.shape[1]  # type: ignore[union-attr]
            top = old[keep] if old is not None else np.zeros((len(keep), width), np.float32)
            bottom = np.zeros((len(added), width), np.float32)
            if extra is not None and extra.shape[1] == width:
                bottom = extra
            rows = np.concatenate([top, bottom])[order]
            if rows.any():  # a projection no card is under any more is dropped
                new.items[pv] = rows
        new.log_length = log_length
        return new

    def _matrix(self) -> np.ndarray:
        """The indexed vectors, by position (a copy out of FAISS)."""
        if self.index is None or not self.card_ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        flat = faiss.downcast_index(self.index.index)
        return flat.reconstruct_n(0, len(self.card_ids))

    def __len__(self) -> int:
        return len(self.card_ids)

    def search_positions(self, query_embedding: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions (into ``card_ids``) of the k nearest cards by inner product, best
        first, and their scores."""
        k = min(k, len(self.card_ids))
        if k <= 0 or self.index is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        q = np.asarray(query_embedding, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise ValueError(f"query has {q.shape[1]} dimensions, the index {self.dim}")
        # One query runs on this thread alone: FAISS would split a large index's scan
        # over OpenMP threads, whose barrier stalls for milliseconds when the cores are
        # busy (a worker's other threads, other processes). The setting is this thread's.
        faiss.omp_set_num_threads(1)
        scores, ids = self.index.search(np.ascontiguousarray(q), k)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def search(self, query_embedding: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
        """The k nearest cards by inner product (= cosine for unit vectors), best first."""
        positions, scores = self.search_positions(query_embedding, k)
        return [self.card_ids[i] for i in positions], scores

    def global_positions(self, limit: int) -> list[int]:
        """Positions of up to ``limit`` global cards, newest first (a later general
        preference is the user's current one)."""
        positions = np.flatnonzero(self.global_mask).tolist()
        positions.sort(key=lambda i: (self.created[i], self.card_ids[i]), reverse=True)
        return positions[: max(limit, 0)]

    def item_rows(self, positions: np.ndarray, projection_version: str, default_dim: int) -> np.ndarray:
        """Item vectors (float64) of the cards at ``positions``; zero for a card whose item
        belongs to another projection, ``default_dim`` wide when no card is under this one."""
        rows = self.items.get(projection_version)
        if rows is None:
            return np.zeros((len(positions), default_dim), dtype=np.float64)
        return rows[positions].astype(np.float64)

    def notes_of(self, card_ids: list[str]) -> list[str]:
        """The notes of cards in this index."""
        if self.notes is None:
            raise ValueError("this index was not built from cards: it holds no notes")
        out = []
        for cid in card_ids:
            pos = bisect_left(self.card_ids, cid)
            if pos == len(self.card_ids) or self.card_ids[pos] != cid:
                raise KeyError(f"card {cid!r} is not in this index")
            out.append(self.notes[pos])
        return out


def _item_matrices(embeddings: list[CardEmbedding]) -> dict[str, np.ndarray]:
    """Projection version -> (n, d) float32 item vectors, zero rows for cards under another
    projection (or with another width); d is the first card's of that version."""
    out: dict[str, np.ndarray] = {}
    for row, emb in enumerate(embeddings):
        rows = out.get(emb.projection_version)
        if rows is None:
            rows = out[emb.projection_version] = np.zeros((len(embeddings), len(emb.item)), np.float32)
        if len(emb.item) == rows.shape[1]:
            rows[row] = emb.item
    return out


class IndexCache:
    """A thread-safe LRU of ``UserIndex`` per user, valid while the store version matches."""

    def __init__(self, max_users: int = 1024) -> None:
        if max_users < 1:
            raise ValueError(f"max_users must be at least 1, got {max_users}")
        self.max_users = max_users
        self._entries: OrderedDict[str, UserIndex] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.builds = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, user_id: object) -> bool:
        with self._lock:
            return user_id in self._entries

    def get(
        self, user_id: str, version: int, load: Callable[[], dict[str, np.ndarray]]
    ) -> UserIndex:
        """The user's index at ``version``; ``load`` (card_id -> note embedding) runs only
        on a miss or a version change."""
        return self.get_or_update(user_id, version, lambda _stale: UserIndex(load(), version=version))

    def get_or_update(
        self, user_id: str, version: int, build: Callable[[UserIndex | None], UserIndex]
    ) -> UserIndex:
        """The cached index if it is at ``version``; else ``build(stale)``, given the
        user's cached index at another version (or None), which it may patch. The built
        index carries its own version (at least ``version``: the store may have moved on)."""
        with self._lock:
            cached = self._entries.get(user_id)
            if cached is not None and cached.version == version:
                self._entries.move_to_end(user_id)
                self.hits += 1
                return cached
        # build outside the lock: loading reads the store, and other users must not wait
        built = build(cached)
        with self._lock:
            self.builds += 1
            current = self._entries.get(user_id)
            if current is not None and current.version > built.version:
                return built  # a concurrent caller already cached a newer index; keep it
            self._entries[user_id] = built
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.max_users:
                self._entries.popitem(last=False)
        return built

    def invalidate(self, user_id: str) -> None:
        with self._lock:
            self._entries.pop(user_id, None)


def active_note_embeddings(
    cards: Mapping[str, Card], embeddings: Mapping[str, CardEmbedding]
) -> dict[str, np.ndarray]:
    """Note embeddings of the cards that are not superseded (what an index should hold)."""
    return active_embeddings(cards, embeddings, "note")


def active_embeddings(
    cards: Mapping[str, Card], embeddings: Mapping[str, CardEmbedding], match_on: str
) -> dict[str, np.ndarray]:
    """The ``match_on`` ("note" or "condition") embeddings of the cards not superseded."""
    return {
        cid: np.asarray(getattr(embeddings[cid], match_on), dtype=np.float32)
        for cid, card in cards.items()
        if card.superseded_by is None and cid in embeddings
    }


def dense_candidates(
    index: UserIndex, query_embedding: np.ndarray, k: int
) -> tuple[list[str], np.ndarray]:
    """Top-k card ids by cosine and their cosines, best first."""
    return index.search(query_embedding, k)


def cosine_log_p(cosines: np.ndarray) -> np.ndarray:
    """The "none" reranker (an ablation): s0 = log((1 + cos) / 2), clipped at log(1e-6)."""
    return log_probs((1.0 + np.asarray(cosines, dtype=np.float64)) / 2.0)


def retrieve(
    user_id: str,
    query_embedding: np.ndarray,
    index: UserIndex,
    embeddings: Mapping[str, CardEmbedding] | None,
    vector: UserVector | None,
    cfg: PolicyConfig,
    rng: np.random.Generator,
    learning: bool,
    projection_version: str,
    rerank: Reranker | Any | None = None,
    query: str = "",
    notes: Mapping[str, str] | None = None,
    opening: str = "",
) -> RetrievalTrace:
    """Query embedding -> global cards set aside -> dense top-K -> s0 -> policy list, as a trace.

    Item vectors are the stored ``CardEmbedding.item`` of each candidate: from
    ``embeddings``, or, when it is None, from the index (``UserIndex.from_cards``), which
    then also gives the notes and sets global cards aside (``cfg.global_bypass``: up to
    ``cfg.max_global`` of them skip ranking; the trace lists them as ``bypassed``). A card
    whose item vector belongs to another projection gets a zero item vector: it still
    competes on s0, and the trace records exactly the scores it was ranked by. ``rerank``
    is either a callable mapping (candidate ids, cosines) to s0, or a
    ``rerankers.Reranker`` (it has ``score(query, documents)``), which reads ``query`` (or
    ``opening``, see ``rerankers.bind_reranker``) and the candidates' ``notes`` (card id ->
    note text); without one s0 = log((1 + cos) / 2).
    """
    default_dim = len(vector.z_long) if vector else 0
    bypassed: list[str] = []
    if embeddings is None:
        if index.notes is None:
            raise ValueError("without embeddings, the index must hold them (UserIndex.from_cards)")
        aside = index.global_positions(cfg.max_global) if cfg.global_bypass else []
        bypassed = [index.card_ids[i] for i in aside]
        positions, cosines = index.search_positions(query_embedding, cfg.top_k_dense + len(aside))
        if aside:
            keep = ~np.isin(positions, aside)
            positions, cosines = positions[keep][: cfg.top_k_dense], cosines[keep][: cfg.top_k_dense]
        ids = [index.card_ids[i] for i in positions]
        items = index.item_rows(positions, projection_version, default_dim)
        if notes is None:
            notes = {cid: index.notes[i] for cid, i in zip(ids, positions, strict=True)}
    else:
        ids, cosines = dense_candidates(index, query_embedding, cfg.top_k_dense)
        keep = [i for i, cid in enumerate(ids) if cid in embeddings]  # index older than the map
        ids = [ids[i] for i in keep]
        cosines = cosines[keep]
        dim = _item_dim(embeddings, projection_version) or default_dim
        items = np.zeros((len(ids), dim), dtype=np.float64)
        for row, cid in enumerate(ids):
            emb = embeddings[cid]
            if emb.projection_version == projection_version and len(emb.item) == dim:
                items[row] = emb.item
    if rerank is not None and hasattr(rerank, "score"):
        from vars_core.rerankers import bind_reranker  # rerankers imports this module

        rerank = bind_reranker(rerank, query, notes, opening)
    log_p = rerank(ids, cosines) if rerank is not None else cosine_log_p(cosines)
    trace = select(user_id, ids, log_p, items, vector, cfg, rng, learning, projection_version)
    return msgspec.structs.replace(trace, bypassed=bypassed) if bypassed else trace


def _item_dim(embeddings: Mapping[str, CardEmbedding], projection_version: str) -> int:
    for emb in embeddings.values():
        if emb.projection_version == projection_version:
            return len(emb.item)
    return 0
