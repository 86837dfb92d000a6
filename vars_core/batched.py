"""In-process models behind a dynamic batcher: concurrent tasks of one worker process share
forward passes (DESIGN §7). The wrappers keep the embedder and reranker interfaces, so the
stages do not know whether they are batched.

When batching applies (``batching_on``): only for models that run in this process, and by
default (``enabled = "auto"``) only on an accelerator. A merged forward pass pads texts to a
common length, which moves a vector's last bits; on CPU the embedded default keeps one text
per pass, so the queued pipeline reproduces the in-process runner bit for bit.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from vars_core.batcher import Batcher
from vars_core.config import BatcherConfig, EmbedderConfig, RerankerConfig

IN_PROCESS_EMBEDDERS = ("minilm", "transformers")
IN_PROCESS_RERANKERS = ("yesno", "cross-encoder")


def batching_on(cfg: BatcherConfig, in_process: bool, device: str) -> bool:
    if not in_process or cfg.enabled is False:
        return False
    if cfg.enabled is True:
        return True
    return not device.startswith("cpu")


def embedder_batched(batcher: BatcherConfig, embedder: EmbedderConfig) -> bool:
    return batching_on(batcher, embedder.kind in IN_PROCESS_EMBEDDERS, embedder.device)


def reranker_batched(batcher: BatcherConfig, reranker: RerankerConfig) -> bool:
    return batching_on(batcher, reranker.kind in IN_PROCESS_RERANKERS, reranker.device)


class BatchedEmbedder:
    """An embedder whose ``embed`` and ``embed_queries`` calls from many threads are merged.

    Items are (method, text): documents and queries may meet in one batch and are embedded
    with one call of each method. The inner embedder's text cache still applies."""

    def __init__(self, inner: Any, max_items: int = 32, max_wait_ms: float = 5.0) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.name = inner.name
        self.batcher: Batcher[tuple[str, str], np.ndarray] = Batcher(
            self._batch, max_items, max_wait_ms, name=f"batcher-{inner.name}"
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._run("embed", texts)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        method = "embed_queries" if hasattr(self.inner, "embed_queries") else "embed"
        return self._run(method, texts)

    def close(self) -> None:
        self.batcher.close()

    def _run(self, method: str, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(self.batcher.run([(method, t) for t in texts]))

    def _batch(self, items: list[tuple[str, str]]) -> list[np.ndarray]:
        by_method: dict[str, list[int]] = defaultdict(list)
        for i, (method, _) in enumerate(items):
            by_method[method].append(i)
        out: list[np.ndarray] = [np.empty(0)] * len(items)
        for method, rows in by_method.items():
            vectors = getattr(self.inner, method)([items[i][1] for i in rows])
            for i, vector in zip(rows, vectors, strict=True):
                out[i] = vector
        return out


class BatchedReranker:
    """A reranker whose (query, document) pairs from many threads are scored together;
    the inner model must have ``score_pairs``."""

    def __init__(self, inner: Any, max_items: int = 32, max_wait_ms: float = 5.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.batcher: Batcher[tuple[str, str], float] = Batcher(
            self._batch, max_items, max_wait_ms, name=f"batcher-{inner.name}"
        )

    def score(self, query: str, documents: list[str]) -> np.ndarray:
        if not documents:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self.batcher.run([(query, d) for d in documents]), dtype=np.float64)

    def close(self) -> None:
        self.batcher.close()

    def _batch(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [float(s) for s in self.inner.score_pairs(pairs)]
