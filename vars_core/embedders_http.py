"""Embeddings from an OpenAI-compatible server (vLLM, llama.cpp server, OpenAI) over httpx.

Synchronous on purpose: embedding sits inside synchronous stage handlers. ``post_json`` is
shared with the HTTP reranker: one place for the URL, the retries and the error text.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import numpy as np

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class ModelServerError(RuntimeError):
    """A model server call that failed for good, or answered something unusable."""


def endpoint_url(base_url: str, path: str) -> str:
    """``base_url`` plus ``path`` unless the base already ends with it: "http://h:8000",
    "http://h:8000/v1" and "http://h:8000/v1/embeddings" all work."""
    base = base_url.rstrip("/")
    path = path.strip("/")
    return base if base.endswith("/" + path) else f"{base}/{path}"


def post_json(client: httpx.Client, url: str, payload: dict[str, Any], retries: int = 2) -> Any:
    """POST JSON and return the decoded body. Connection errors and 408/429/5xx are retried
    with exponential backoff; anything else fails at once with the server's words."""
    for attempt in range(retries + 1):
        try:
            response = client.post(url, json=payload)
        except httpx.TransportError as exc:
            if attempt == retries:
                raise ModelServerError(f"POST {url} failed: {exc!r}") from exc
        else:
            if response.status_code < 400:
                try:
                    return response.json()
                except ValueError as exc:
                    raise ModelServerError(
                        f"POST {url}: the reply is not JSON: {_redacted(client, response.text)[:200]!r}"
                    ) from exc
            if response.status_code not in _RETRY_STATUS or attempt == retries:
                raise ModelServerError(
                    f"POST {url}: HTTP {response.status_code}: {_redacted(client, response.text)[:300]!r}"
                )
        time.sleep(min(0.25 * 2**attempt, 4.0))
    raise AssertionError("unreachable")  # pragma: no cover


def _redacted(client: httpx.Client, text: str) -> str:
    """Server text with the client's API key blanked out (an error body may echo the
    Authorization header; the message goes into logs and failure reasons)."""
    key = client.headers.get("authorization", "").partition(" ")[2]
    return text.replace(key, "[api key]") if key else text


def http_client(api_key: str | None, timeout_s: float) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(headers=headers, timeout=timeout_s)


class OpenAIEmbeddings:
    """``POST {base_url}/v1/embeddings`` in batches; rows come back L2-normalized.

    ``dim`` is learned from the first reply (one probe request if it is read first).
    ``query_prefix`` plays the same part as in ``TransformersEmbedder``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        batch_size: int = 64,
        query_prefix: str = "",
        retries: int = 2,
        name: str = "",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        path = "embeddings" if base_url.rstrip("/").endswith("/v1") else "v1/embeddings"
        self.url = endpoint_url(base_url, path)
        self.model = model
        self.batch_size = batch_size
        self.query_prefix = query_prefix
        self.retries = retries
        self.name = name or model
        self._dim: int | None = None
        self._client = http_client(api_key, timeout_s)
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        rows = [
            self._batch(texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(rows)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.embed([self.query_prefix + t for t in texts])

    def close(self) -> None:
        self._client.close()

    def _batch(self, texts: list[str]) -> np.ndarray:
        payload = {"model": self.model, "input": texts, "encoding_format": "float"}
        body = post_json(self._client, self.url, payload, self.retries)
        matrix = self._parse(body, len(texts))
        with self._lock:
            if self._dim is None:
                self._dim = matrix.shape[1]
            elif matrix.shape[1] != self._dim:
                raise ModelServerError(
                    f"{self.url}: {matrix.shape[1]}-d embeddings after {self._dim}-d ones"
                )
        return matrix

    def _parse(self, body: Any, n: int) -> np.ndarray:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != n:
            got = f"{len(data)} items" if isinstance(data, list) else repr(body)[:200]
            raise ModelServerError(f"{self.url}: expected 'data' with {n} embeddings, got {got}")
        rows: list[Any] = [None] * n
        for position, item in enumerate(data):
            if not isinstance(item, dict) or not isinstance(item.get("embedding"), list):
                raise ModelServerError(f"{self.url}: item {position} has no 'embedding' list")
            index = item.get("index", position)  # servers may reorder; 'index' is the truth
            if not isinstance(index, int) or not 0 <= index < n or rows[index] is not None:
                raise ModelServerError(f"{self.url}: bad or repeated index {index!r}")
            rows[index] = item["embedding"]
        try:
            matrix = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ModelServerError(f"{self.url}: embeddings are not equal-length numbers") from exc
        if matrix.ndim != 2 or matrix.shape[1] == 0 or not np.isfinite(matrix).all():
            raise ModelServerError(f"{self.url}: embeddings are empty or not finite")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ModelServerError(f"{self.url}: a zero embedding cannot be normalized")
        return (matrix / norms).astype(np.float32)
