"""The per-user retrieval policy: s = s0 + <z_eff, v>, pi = softmax(s / tau), a list of k cards.

With learning on, the list is a Plackett-Luce sample (one card at a time, without
replacement), so REINFORCE has a proper log-probability to differentiate; with learning off
it is the greedy top-k. Either way the trace freezes everything a later update needs.
"""

from __future__ import annotations

import numpy as np

from vars_core.config import PolicyConfig
from vars_core.types import RetrievalTrace, UserVector


def effective_vector(vector: UserVector, cfg: PolicyConfig) -> np.ndarray:
    """z_eff = beta_L z_long + beta_S z_short (float64)."""
    z_long = np.asarray(vector.z_long, dtype=np.float64)
    z_short = np.asarray(vector.z_short, dtype=np.float64)
    if z_short.shape != z_long.shape:
        raise ValueError(f"user vector halves differ: {z_long.shape} vs {z_short.shape}")
    return cfg.beta_long * z_long + cfg.beta_short * z_short


def policy_scores(s0: np.ndarray, items: np.ndarray, z_eff: np.ndarray) -> np.ndarray:
    """s = s0 + items @ z_eff, one score per candidate (float64)."""
    s0 = np.asarray(s0, dtype=np.float64)
    items = np.asarray(items, dtype=np.float64)
    if items.shape[0] == 0:
        return s0.copy()
    return s0 + items @ np.asarray(z_eff, dtype=np.float64)


def softmax(s: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """softmax(s / tau), shifted by the max so large scores cannot overflow."""
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    x = np.asarray(s, dtype=np.float64) / tau
    if x.size == 0:
        return x
    e = np.exp(x - x.max())
    return e / e.sum()


def plackett_luce_sample(pi: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """k indices drawn one at a time without replacement, each step from pi renormalized."""
    remaining = np.ones(pi.shape[0], dtype=bool)
    chosen: list[int] = []
    for _ in range(min(k, pi.shape[0])):
        p = np.where(remaining, pi, 0.0)
        total = p.sum()
        # pi can underflow to zero for far-off candidates; then the rest are equally likely
        p = p / total if total > 0 else remaining / remaining.sum()
        idx = int(rng.choice(pi.shape[0], p=p))
        chosen.append(idx)
        remaining[idx] = False
    return chosen


def greedy_top_k(s: np.ndarray, k: int) -> list[int]:
    """The k highest scores; equal scores keep candidate order."""
    return [int(i) for i in np.argsort(-np.asarray(s), kind="stable")[:k]]


def select(
    user_id: str,
    candidate_ids: list[str],
    s0: np.ndarray,
    items: np.ndarray,
    vector: UserVector | None,
    cfg: PolicyConfig,
    rng: np.random.Generator,
    learning: bool,
    projection_version: str,
) -> RetrievalTrace:
    """Choose the prompt's cards and record the trace.

    ``vector=None`` ranks by s0 alone (the rag method). A vector learned under another
    projection than the items' is ignored for the same reason: its coordinates mean
    nothing in this item space.
    """
    n = len(candidate_ids)
    s0 = np.asarray(s0, dtype=np.float64).reshape(-1)
    items = np.asarray(items, dtype=np.float64).reshape(n, -1) if n else np.zeros((0, 0))
    if s0.shape[0] != n or items.shape[0] != n:
        raise ValueError(f"{n} candidates but {s0.shape[0]} scores and {items.shape[0]} items")
    if n == 0:
        return RetrievalTrace(
            user_id=user_id,
            candidate_ids=[],
            item_vectors=[],
            base_scores=[],
            probs=[],
            chosen=[],
            tau=cfg.tau,
            sampled=learning,
            projection_version=projection_version,
        )
    z_eff = np.zeros(items.shape[1])
    if vector is not None and _usable(vector, projection_version):
        z_eff = effective_vector(vector, cfg)
        if z_eff.shape[0] != items.shape[1]:
            raise ValueError(
                f"user vector has {z_eff.shape[0]} dimensions, item vectors {items.shape[1]}"
            )
    s = policy_scores(s0, items, z_eff)
    pi = softmax(s, cfg.tau)
    k = min(cfg.list_size, n)
    chosen = plackett_luce_sample(pi, k, rng) if learning else greedy_top_k(s, k)
    return RetrievalTrace(
        user_id=user_id,
        candidate_ids=list(candidate_ids),
        item_vectors=items.tolist(),
        base_scores=s0.tolist(),
        probs=pi.tolist(),
        chosen=chosen,
        tau=cfg.tau,
        sampled=learning,
        projection_version=projection_version,
    )


def _usable(vector: UserVector, projection_version: str) -> bool:
    if not vector.z_long:  # never written: no preference yet
        return False
    return not (vector.projection_version and vector.projection_version != projection_version)
