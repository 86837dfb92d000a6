"""The global, versioned projection from embedding space to item-vector space: v = P (e - mu).

One projection for every user (never a per-user basis, which would rotate under a learned
vector). Item vectors are stored with the projection's version, so a vector learned under
one projection is never mixed with items of another.

Two kinds, by name in ``load_projection``: "random" (seeded, orthonormal rows, zero mean)
and "pca" (fitted on the shipped corpus of preference notes embedded by MiniLM, and shipped
as a file; refit with ``python -m vars_core.projection fit``).
"""

from __future__ import annotations

import argparse
import hashlib
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

DATA = resources.files("vars_core") / "data"
CORPUS_FILE = "preference_notes.txt"
PCA_FILE = "projection_pca_minilm_256.npz"


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
_FILES: dict[str, Projection] = {}
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


def fit_pca_projection(
    embeddings: np.ndarray, dim: int = 256, version: str | None = None
) -> Projection:
    """PCA of a corpus of embeddings: ``mean`` is the corpus mean, the rows of ``matrix`` are
    the top ``dim`` principal directions (orthonormal).

    A corpus of rank r < dim (fewer samples than dim, or degenerate) gets its r directions
    completed by an orthonormal basis of their complement, taken from QR of [V_r | I] so
    the same corpus always gives the same matrix. Each row's sign makes its largest
    coordinate positive. The default version names the shape and a hash of the input.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"need a (n, D) matrix of embeddings, got shape {x.shape}")
    n, input_dim = x.shape
    if not 0 < dim <= input_dim:
        raise ValueError(f"need 0 < dim <= input_dim, got dim={dim}, input_dim={input_dim}")
    mean = x.mean(axis=0)
    _, sing, vt = np.linalg.svd(x - mean, full_matrices=False)
    tol = (sing[0] if sing.size else 0.0) * max(n, input_dim) * np.finfo(np.float64).eps
    rank = min(int((sing > tol).sum()), dim)
    basis = vt[:rank]
    if rank < dim:
        q, _ = np.linalg.qr(np.concatenate([basis.T, np.eye(input_dim)], axis=1))
        basis = np.concatenate([basis, q[:, rank:dim].T])
    peak = np.argmax(np.abs(basis), axis=1)
    basis = basis * np.sign(basis[np.arange(dim), peak])[:, None]
    if version is None:
        digest = hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()
        version = f"pca-{input_dim}x{dim}-{digest[:12]}"
    return Projection(version, basis.astype(np.float32), mean.astype(np.float32))


def save_projection(proj: Projection, path: str | Path, **metadata: str) -> None:
    """An .npz with ``matrix``, ``mean``, ``version`` and string metadata (no pickles)."""
    extra = {key: np.array(str(value)) for key, value in metadata.items()}
    with open(path, "wb") as fh:  # np.savez on a path would append ".npz" to other names
        np.savez(fh, matrix=proj.matrix, mean=proj.mean, version=np.array(proj.version), **extra)


def load_projection_file(path: str | Path) -> Projection:
    key = str(path)
    with _LOCK:
        cached = _FILES.get(key)
        if cached is not None:
            return cached
    with np.load(path, allow_pickle=False) as data:
        missing = {"matrix", "mean", "version"} - set(data.files)
        if missing:
            raise ValueError(f"{path} is not a projection file: no {', '.join(sorted(missing))}")
        matrix = np.ascontiguousarray(data["matrix"], dtype=np.float32)
        mean = np.ascontiguousarray(data["mean"], dtype=np.float32)
        version = str(data["version"])
    matrix.flags.writeable = False
    mean.flags.writeable = False
    proj = Projection(version, matrix, mean)
    with _LOCK:
        return _FILES.setdefault(key, proj)


def projection_metadata(path: str | Path) -> dict[str, str]:
    """The string fields of a projection file besides the arrays (corpus hash, embedder...)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: str(data[k]) for k in data.files if k not in ("matrix", "mean")}


PROJECTIONS = ("random", "pca")


def load_projection(
    name: str = "random", seed: int = 0, input_dim: int = 384, dim: int = 256
) -> Projection:
    """The global projection by name: "random" (``random_projection(input_dim, dim, seed)``)
    or "pca" (the shipped PCA of MiniLM note embeddings; it must fit input_dim and dim)."""
    if name == "random":
        return random_projection(input_dim, dim, seed)
    if name == "pca":
        with resources.as_file(DATA / PCA_FILE) as path:
            proj = load_projection_file(path)
        if (proj.input_dim, proj.dim) != (input_dim, dim):
            raise ValueError(
                f"the shipped PCA projection maps {proj.input_dim} -> {proj.dim} dimensions, "
                f"asked for {input_dim} -> {dim}: refit with python -m vars_core.projection fit"
            )
        return proj
    raise ValueError(f"unknown projection {name!r}; known: {', '.join(PROJECTIONS)}")


def read_corpus(path: str | Path | None = None) -> list[str]:
    """Notes, one a line; blank lines and lines starting with "#" are skipped."""
    text = Path(path).read_text() if path else (DATA / CORPUS_FILE).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vars_core.projection")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit the PCA projection on the corpus with MiniLM")
    fit.add_argument("--corpus", help=f"notes, one a line (default: the shipped {CORPUS_FILE})")
    fit.add_argument("--dim", type=int, default=256)
    fit.add_argument("--out", help=f"output .npz (default: the shipped {PCA_FILE})")
    args = parser.parse_args(argv)

    from vars_core.embedder import default_embedder  # the heavy import only for fitting

    notes = read_corpus(args.corpus)
    embedder = default_embedder()
    proj = fit_pca_projection(embedder.embed(notes), dim=args.dim)
    corpus_hash = hashlib.sha256("\n".join(notes).encode()).hexdigest()
    out = Path(args.out) if args.out else Path(str(DATA / PCA_FILE))
    save_projection(
        proj, out, embedder=embedder.name, corpus_sha256=corpus_hash, notes=str(len(notes))
    )
    print(f"{proj.version}: {len(notes)} notes, {proj.input_dim} -> {proj.dim}, wrote {out}")


if __name__ == "__main__":
    main()
