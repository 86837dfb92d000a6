"""Per-user dense retrieval: a FAISS inner-product index over one user's active cards.

Candidates only ever come from the user's own index (the hard partition). A worker keeps
recently used indexes in an LRU keyed by user and reuses one while the user's store
version is unchanged; any write to the store bumps the version and forces a rebuild.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import faiss
import numpy as np

from vars_core.config import PolicyConfig
from vars_core.policy import select
from vars_core.types import Card, CardEmbedding, RetrievalTrace, UserVector

# (candidate ids, cosines) -> s0; a text reranker is bound to this shape by rerankers
Reranker = Callable[[list[str], np.ndarray], np.ndarray]


class UserIndex:
    """FAISS ``IndexIDMap(IndexFlatIP)`` over unit note embeddings; int64 ids are positions
    in ``card_ids`` (sorted, so a rebuild from the same cards gives the same ids)."""

    def __init__(self, embeddings: Mapping[str, np.ndarray], version: int = 0, dim: int = 0):
        self.version = version
        self.card_ids: list[str] = sorted(embeddings)
        if self.card_ids:
            matrix = np.stack([np.asarray(embeddings[c], dtype=np.float32) for c in self.card_ids])
            dim = matrix.shape[1]
        else:
            matrix = np.zeros((0, dim), dtype=np.float32)
        self.dim = dim
        self.index: faiss.IndexIDMap | None = None
        if dim:
            self.index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
            if self.card_ids:
                self.index.add_with_ids(
                    np.ascontiguousarray(matrix), np.arange(len(self.card_ids), dtype=np.int64)
                )

    def __len__(self) -> int:
        return len(self.card_ids)

    def search(self, query_embedding: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
        """The k nearest cards by inner product (= cosine for unit vectors), best first."""
        k = min(k, len(self.card_ids))
        if k <= 0 or self.index is None:
            return [], np.zeros(0, dtype=np.float32)
        q = np.asarray(query_embedding, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise ValueError(f"query has {q.shape[1]} dimensions, the index {self.dim}")
        scores, ids = self.index.search(np.ascontiguousarray(q), k)
        keep = ids[0] >= 0
        return [self.card_ids[i] for i in ids[0][keep]], scores[0][keep]


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
        with self._lock:
            cached = self._entries.get(user_id)
            if cached is not None and cached.version == version:
                self._entries.move_to_end(user_id)
                self.hits += 1
                return cached
        # build outside the lock: loading reads the store, and other users must not wait
        built = UserIndex(load(), version=version)
        with self._lock:
            self.builds += 1
            current = self._entries.get(user_id)
            if current is not None and current.version > version:
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


def base_scores(cosines: np.ndarray) -> np.ndarray:
    """The "none" reranker: s0 = (1 + cos) / 2 in [0, 1]."""
    return np.clip((1.0 + np.asarray(cosines, dtype=np.float64)) / 2.0, 0.0, 1.0)


def retrieve(
    user_id: str,
    query_embedding: np.ndarray,
    index: UserIndex,
    embeddings: Mapping[str, CardEmbedding],
    vector: UserVector | None,
    cfg: PolicyConfig,
    rng: np.random.Generator,
    learning: bool,
    projection_version: str,
    rerank: Reranker | Any | None = None,
    query: str = "",
    notes: Mapping[str, str] | None = None,
) -> RetrievalTrace:
    """Query embedding -> dense top-K -> s0 -> policy list, as a trace.

    Item vectors are the stored ``CardEmbedding.item`` of each candidate. A card whose item
    vector belongs to another projection gets a zero item vector: it still competes on s0,
    and the trace records exactly the scores it was ranked by. ``rerank`` is either a
    callable mapping (candidate ids, cosines) to s0, or a ``rerankers.Reranker`` (it has
    ``score(query, documents)``), which reads ``query`` and the candidates' ``notes``
    (card id -> note text); without one s0 = (1 + cos) / 2.
    """
    ids, cosines = dense_candidates(index, query_embedding, cfg.top_k_dense)
    keep = [i for i, cid in enumerate(ids) if cid in embeddings]  # index older than the map
    ids = [ids[i] for i in keep]
    cosines = cosines[keep]
    if rerank is not None and hasattr(rerank, "score"):
        from vars_core.rerankers import bind_reranker  # rerankers imports this module

        rerank = bind_reranker(rerank, query, notes)
    s0 = rerank(ids, cosines) if rerank is not None else base_scores(cosines)
    dim = _item_dim(embeddings, projection_version) or (len(vector.z_long) if vector else 0)
    items = np.zeros((len(ids), dim), dtype=np.float64)
    for row, cid in enumerate(ids):
        emb = embeddings[cid]
        if emb.projection_version == projection_version and len(emb.item) == dim:
            items[row] = emb.item
    return select(user_id, ids, s0, items, vector, cfg, rng, learning, projection_version)


def _item_dim(embeddings: Mapping[str, CardEmbedding], projection_version: str) -> int:
    for emb in embeddings.values():
        if emb.projection_version == projection_version:
            return len(emb.item)
    return 0
