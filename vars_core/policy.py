"""The per-user retrieval policy: s = s0 + b(q, m), pi = softmax(s / tau), a list of k cards.

s0 is the reranker's log P(yes). The learned term b moves cards the reranker accepts
(P(yes) >= 0.5) by at most c = kappa * std(s0 over the top 2k candidates):
``b = c * tanh(<z_eff, v_m> / c)``; the cards it rejects get no learned term, so the user
vector reorders what applies and cannot pull in what does not.

Serving is the greedy top-k under s, as the reference serves; on a share ``epsilon`` of
learning turns the list is a Plackett-Luce sample instead (exploration). Either way the
trace freezes everything a later update needs: s0, the learned term and its slope, pi and
the list, and whether it was sampled.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vars_core.config import PolicyConfig
from vars_core.types import RetrievalTrace, UserVector

# The reranker accepts a card when P(yes) >= 0.5.
ACCEPT_LOG_P = math.log(0.5)
# The floor of every s0: log(1e-6). A reranker certain that a note does not apply still
# gives a finite score, so softmax and the learned term's cap stay defined.
MIN_LOG_P = math.log(1e-6)


def log_probs(p: Any) -> np.ndarray:
    """log of probabilities, clipped to [MIN_LOG_P, 0]."""
    return np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1.0))


def log_sigmoid(logits: Any) -> np.ndarray:
    """log sigmoid(x), computed stably, clipped to [MIN_LOG_P, 0]."""
    x = np.asarray(logits, dtype=np.float64)
    return np.maximum(-np.logaddexp(0.0, -x), MIN_LOG_P)


def effective_vector(vector: UserVector, cfg: PolicyConfig) -> np.ndarray:
    """z_eff = beta_L z_long + beta_S z_short (float64)."""
    z_long = np.asarray(vector.z_long, dtype=np.float64)
    z_short = np.asarray(vector.z_short, dtype=np.float64)
    if z_short.shape != z_long.shape:
        raise ValueError(f"user vector halves differ: {z_long.shape} vs {z_short.shape}")
    return cfg.beta_long * z_long + cfg.beta_short * z_short


def ranking_base(log_p: np.ndarray, cfg: PolicyConfig) -> np.ndarray:
    """The base score s0 the policy ranks by: log P(yes), or P(yes) under the "prob" ablation."""
    log_p = np.asarray(log_p, dtype=np.float64)
    return np.exp(log_p) if cfg.s0_scale == "prob" else log_p


def learned_cap(s0: np.ndarray, cfg: PolicyConfig) -> float:
    """c = kappa * std(s0 over the top 2k candidates): the learned term's reach, on the
    scale of the reranker's own spread among the cards that compete for the list."""
    top = np.sort(np.asarray(s0, dtype=np.float64))[::-1][: 2 * cfg.list_size]
    return float(cfg.kappa * top.std()) if top.size > 1 else 0.0


def learned_term(
    log_p: np.ndarray, items: np.ndarray, z_eff: np.ndarray, cap: float, cfg: PolicyConfig
) -> tuple[np.ndarray, np.ndarray]:
    """b(q, m) per candidate and its derivative with respect to <z_eff, v_m> (the slope
    that turns v_m into the gradient u_m)."""
    raw = np.asarray(items, dtype=np.float64) @ np.asarray(z_eff, dtype=np.float64)
    if cfg.learned_term == "linear":
        return raw, np.ones_like(raw)
    accepted = np.asarray(log_p, dtype=np.float64) >= ACCEPT_LOG_P - 1e-12
    if cap <= 0:
        return np.zeros_like(raw), np.zeros_like(raw)
    t = np.tanh(raw / cap)
    return np.where(accepted, cap * t, 0.0), np.where(accepted, 1.0 - t * t, 0.0)


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
    log_p: np.ndarray,
    items: np.ndarray,
    vector: UserVector | None,
    cfg: PolicyConfig,
    rng: np.random.Generator,
    learning: bool,
    projection_version: str,
) -> RetrievalTrace:
    """Choose the ranked cards of the prompt and record the trace.

    ``log_p``: the reranker's log P(yes) per candidate. ``vector=None`` ranks by s0 alone
    (the rag method). A vector learned under another projection than the items' is ignored
    for the same reason: its coordinates mean nothing in this item space. ``learning``: a
    rag_vector turn, which explores (samples its list) with probability ``cfg.epsilon``.
    """
    n = len(candidate_ids)
    log_p = np.asarray(log_p, dtype=np.float64).reshape(-1)
    items = np.asarray(items, dtype=np.float64).reshape(n, -1) if n else np.zeros((0, 0))
    if log_p.shape[0] != n or items.shape[0] != n:
        raise ValueError(f"{n} candidates but {log_p.shape[0]} scores and {items.shape[0]} items")
    # Drawn on every learning turn, used or not, so a change of epsilon moves no other draw.
    explore = learning and rng.random() < cfg.epsilon
    if n == 0:
        return RetrievalTrace(
            user_id=user_id,
            candidate_ids=[],
            item_vectors=[],
            base_scores=[],
            probs=[],
            chosen=[],
            tau=cfg.tau,
            sampled=explore,
            projection_version=projection_version,
        )
    s0 = ranking_base(log_p, cfg)
    cap = learned_cap(s0, cfg)
    b, slopes = np.zeros(n), np.zeros(n)
    usable = vector is not None and _usable(vector, projection_version)
    if usable or learning:
        # A learning turn records slopes even before anything is learned (z = 0): the first
        # update differentiates them.
        z_eff = effective_vector(vector, cfg) if usable else np.zeros(items.shape[1])
        if z_eff.shape[0] != items.shape[1]:
            raise ValueError(f"user vector has {z_eff.shape[0]} dimensions, item vectors {items.shape[1]}")
        b, slopes = learned_term(log_p, items, z_eff, cap, cfg)
    s = s0 + b
    pi = softmax(s, cfg.tau)
    k = min(cfg.list_size, n)
    chosen = plackett_luce_sample(pi, k, rng) if explore else greedy_top_k(s, k)
    return RetrievalTrace(
        user_id=user_id,
        candidate_ids=list(candidate_ids),
        item_vectors=items.tolist(),
        base_scores=s0.tolist(),
        probs=pi.tolist(),
        chosen=chosen,
        tau=cfg.tau,
        sampled=explore,
        projection_version=projection_version,
        learned=b.tolist(),
        slopes=slopes.tolist(),
        cap=cap,
    )


def _usable(vector: UserVector, projection_version: str) -> bool:
    if not vector.z_long:  # never written: no preference yet
        return False
    return not (vector.projection_version and vector.projection_version != projection_version)
