"""The global, versioned projection from embedding space to item-vector space: v = P (e - mu).

One projection for every user (never a per-user basis, which would rotate under a learned
vector). Item vectors are stored with the projection's version, so a vector learned under
one projection is never mixed with items of another.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Projection:
    """``matrix`` is (d, D), ``mean`` is (D,); both float32."""

    version: str
    matrix: np.ndarray
    mean: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if self.matrix.ndim != 2 or self.mean.shape != (self.matrix.shape[1],):
            raise ValueError(
                f"projection {self.version!r}: matrix {self.matrix.shape} and mean "
                f"{self.mean.shape} do not fit"
            )

    @property
    def input_dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """P (e - mu) for one (D,) vector or a (n, D) batch; float32."""
        e = np.asarray(embeddings, dtype=np.float32)
        if e.shape[-1] != self.input_dim:
            raise ValueError(
                f"projection {self.version!r} takes {self.input_dim}-d embeddings, got {e.shape}"
            )
        return ((e - self.mean) @ self.matrix.T).astype(np.float32, copy=False)


_CACHE: dict[tuple[int, int, int], Projection] = {}
_LOCK = threading.Lock()


def random_projection(input_dim: int = 384, dim: int = 256, seed: int = 0) -> Projection:
    """A seeded random matrix with orthonormal rows and a zero mean.

    PCG64 is numpy's stable bit stream, and the QR factor's signs are fixed (diag(R) > 0),
    so a seed gives the same matrix on every machine up to floating-point rounding.
    """
    if not 0 < dim <= input_dim:
        raise ValueError(f"need 0 < dim <= input_dim, got dim={dim}, input_dim={input_dim}")
    key = (input_dim, dim, seed)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        gauss = np.random.Generator(np.random.PCG64(seed)).standard_normal((input_dim, dim))
        q, r = np.linalg.qr(gauss)  # q: (D, d), orthonormal columns
        q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
        matrix = np.ascontiguousarray(q.T, dtype=np.float32)
        mean = np.zeros(input_dim, dtype=np.float32)
        matrix.flags.writeable = False  # shared by every caller through the cache
        mean.flags.writeable = False
        proj = Projection(f"rand-{input_dim}x{dim}-s{seed}", matrix, mean)
        _CACHE[key] = proj
        return proj
