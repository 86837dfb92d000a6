"""Learning the user vector: REINFORCE from a list-level reward, and the pairwise conflict
credit from a restated preference.

Only the trace's stored values are used (item vectors, s0, the learned term and its slope,
pi, the list): the cards, the projection or the vector may all have changed since the list
was served, and the gradient must be that of the scores the list was actually ranked by.
Gradients are taken through the learned term: ``u_m = slope_m * v_m``, where the slope is
``d b(q, m) / d <z_eff, v_m>`` (the tanh factor; 0 for cards without a learned term).
"""

from __future__ import annotations

import msgspec
import numpy as np

from vars_core.config import PolicyConfig, ReinforceConfig
from vars_core.policy import learned_term
from vars_core.types import JudgeResult, PairwiseStep, RetrievalTrace, UpdateResult, UserVector


def _items(trace: RetrievalTrace) -> np.ndarray:
    return np.asarray(trace.item_vectors, dtype=np.float64).reshape(len(trace.candidate_ids), -1)


def gradient_rows(trace: RetrievalTrace) -> np.ndarray:
    """u_m per candidate: the item vector times the learned term's slope. A trace written
    before slopes were recorded had the linear term: slope 1."""
    v = _items(trace)
    if not trace.slopes:
        return v
    return v * np.asarray(trace.slopes, dtype=np.float64)[:, None]


def list_log_prob(trace: RetrievalTrace, z_eff: np.ndarray, cfg: PolicyConfig) -> float:
    """log P(chosen list) under Plackett-Luce with logits (s0 + b(z_eff)) / tau, the
    learned term recomputed at ``z_eff`` with the trace's cap (s0 read as log P(yes))."""
    s0 = np.asarray(trace.base_scores, dtype=np.float64)
    b, _ = learned_term(s0, _items(trace), z_eff, trace.cap, cfg)
    logits = (s0 + b) / trace.tau
    remaining = np.ones(logits.shape[0], dtype=bool)
    total = 0.0
    for m in trace.chosen:
        rest = logits[remaining]
        top = rest.max()
        total += logits[m] - (top + np.log(np.exp(rest - top).sum()))
        remaining[m] = False
    return float(total)


def list_gradient(trace: RetrievalTrace) -> np.ndarray:
    """The exact gradient of a sampled list's log-probability with respect to z_eff:
    (1/tau) sum_i (u_{m_i} - sum_{j in R_i} pi_i(j) u_j), where R_i is the candidate set
    minus the cards chosen before step i and pi_i(j) = pi_j / sum_{l in R_i} pi_l."""
    u = gradient_rows(trace)
    pi = np.asarray(trace.probs, dtype=np.float64)
    remaining = np.ones(pi.shape[0], dtype=bool)
    grad = np.zeros(u.shape[1])
    for m in trace.chosen:
        p = np.where(remaining, pi, 0.0)
        total = p.sum()
        # sampling falls back to uniform over R_i when pi underflows there; so does this
        p = p / total if total > 0 else remaining / remaining.sum()
        grad += u[m] - p @ u
        remaining[m] = False
    return grad / trace.tau


def greedy_gradient(trace: RetrievalTrace) -> np.ndarray:
    """The reference's off-policy form for a greedy list, scaled to the exact gradient's
    magnitude: (1/tau)(sum_chosen u - k sum_j pi_j u_j). A greedy list has no
    log-probability to differentiate, so this is a biased surrogate: it raises (or lowers)
    the listed cards together against the policy's average card, and cannot see an order
    inside the list."""
    u = gradient_rows(trace)
    pi = np.asarray(trace.probs, dtype=np.float64)
    k = len(trace.chosen)
    return (u[trace.chosen].sum(axis=0) - k * (pi @ u)) / trace.tau


def policy_gradient(trace: RetrievalTrace) -> np.ndarray:
    """The exact gradient for a sampled list, the off-policy surrogate for a greedy one."""
    return list_gradient(trace) if trace.sampled else greedy_gradient(trace)


def _halves(vector: UserVector, d: int) -> tuple[np.ndarray, np.ndarray]:
    z_long = np.asarray(vector.z_long, dtype=np.float64) if vector.z_long else np.zeros(d)
    z_short = np.asarray(vector.z_short, dtype=np.float64) if vector.z_short else np.zeros(d)
    return z_long, z_short


def reinforce_update(
    vector: UserVector,
    trace: RetrievalTrace,
    judge: JudgeResult,
    cfg: ReinforceConfig,
    policy: PolicyConfig,
) -> tuple[UserVector, UpdateResult]:
    """One REINFORCE step, or the unchanged vector and the reason it was skipped."""
    reason = _skip_reason(vector, trace, judge)
    if reason:
        return vector, UpdateResult(applied=False, reason=reason)
    advantage = judge.g * (judge.reward - vector.baseline)
    if abs(advantage) < cfg.min_advantage:
        return vector, UpdateResult(applied=False, advantage=advantage, reason="small advantage")
    grad = policy_gradient(trace)
    z_long, z_short = _halves(vector, grad.shape[0])
    # z_eff = beta_L z_long + beta_S z_short, so each half's gradient carries its beta
    z_long = z_long + cfg.eta_long * policy.beta_long * advantage * grad
    z_short = (1.0 - cfg.decay_short) * z_short + cfg.eta_short * policy.beta_short * advantage * grad
    baseline = (1.0 - cfg.alpha) * vector.baseline + cfg.alpha * judge.reward
    new = msgspec.structs.replace(
        vector,
        z_long=z_long.tolist(),
        z_short=z_short.tolist(),
        baseline=baseline,
        updates=vector.updates + 1,
        projection_version=trace.projection_version,
    )
    return new, UpdateResult(applied=True, advantage=advantage)


def _skip_reason(vector: UserVector, trace: RetrievalTrace, judge: JudgeResult) -> str:
    if not judge.apply:
        return "gated"
    if not trace.candidate_ids or not trace.chosen:
        return "empty trace"
    if vector.projection_version and vector.projection_version != trace.projection_version:
        return (
            f"projection version {trace.projection_version!r} of the trace differs from "
            f"{vector.projection_version!r} of the vector"
        )
    if vector.z_long and len(vector.z_long) != len(trace.item_vectors[0]):
        return "dimension mismatch"
    return ""


# --------------------------------------------------------------------------- pairwise credit


def pairwise_credit(
    vector: UserVector,
    trace: RetrievalTrace,
    restated: str,
    restated_item: list[float] | None,
    conflicting: list[str],
    cfg: ReinforceConfig,
    policy: PolicyConfig,
) -> tuple[UserVector, list[PairwiseStep]]:
    """The pairwise conflict credit: for each card c of ``conflicting`` (ranked cards of
    ``trace``'s list whose action conflicts with the restated card r),
    ``z_long += eta_P beta_L (1/tau) sigmoid(-Delta) (u_r - u_c)``, Delta = (s_r - s_c) / tau.

    s and u come from the trace. When r was not among the trace's candidates (a card just
    created, or one the dense search missed), s_r and u_r are its learned term alone, from
    ``restated_item`` (its stored item vector) at the current z_eff and the trace's cap.
    Returns the vector unchanged and no steps when there is nothing to credit."""
    if cfg.eta_pairwise <= 0 or not conflicting or not trace.candidate_ids:
        return vector, []
    if vector.projection_version and vector.projection_version != trace.projection_version:
        return vector, []
    u = gradient_rows(trace)
    s = np.asarray(trace.base_scores, dtype=np.float64)
    if trace.learned:
        s = s + np.asarray(trace.learned, dtype=np.float64)
    z_long, z_short = _halves(vector, u.shape[1])
    position = {cid: i for i, cid in enumerate(trace.candidate_ids)}
    if restated in position:
        s_r, u_r = s[position[restated]], u[position[restated]]
    elif restated_item is not None and len(restated_item) == u.shape[1]:
        v_r = np.asarray(restated_item, dtype=np.float64)
        z_eff = policy.beta_long * z_long + policy.beta_short * z_short
        # A restated preference applies: its learned term is on (log P(yes) = 0 here).
        b, slope = learned_term(np.zeros(1), v_r[None, :], z_eff, trace.cap, policy)
        s_r, u_r = float(b[0]), slope[0] * v_r
    else:
        return vector, []
    steps: list[PairwiseStep] = []
    for cid in conflicting:
        if cid not in position or cid == restated:
            continue
        c = position[cid]
        delta = float((s_r - s[c]) / trace.tau)
        weight = 1.0 / (1.0 + np.exp(delta))  # sigmoid(-delta)
        z_long = z_long + cfg.eta_pairwise * policy.beta_long / trace.tau * weight * (u_r - u[c])
        steps.append(PairwiseStep(restated, cid, delta))
    if not steps:
        return vector, []
    new = msgspec.structs.replace(
        vector,
        z_long=z_long.tolist(),
        z_short=z_short.tolist(),
        projection_version=trace.projection_version,
        pairwise_steps=vector.pairwise_steps + len(steps),
    )
    return new, steps


def reset_session(vector: UserVector) -> UserVector:
    """A new session: the short-term vector starts from zero; z_long and b persist."""
    return msgspec.structs.replace(vector, z_short=[0.0] * len(vector.z_short))
