"""REINFORCE on the user vector from one reward and the trace of the turn it rates.

Only the trace's stored item vectors and pi are used: the cards, the projection or the
vector may all have changed since the list was sampled, and the gradient must be that of
the distribution the list was actually drawn from.
"""

from __future__ import annotations

import msgspec
import numpy as np

from vars_core.config import PolicyConfig, ReinforceConfig
from vars_core.types import JudgeResult, RetrievalTrace, UpdateResult, UserVector


def _items(trace: RetrievalTrace) -> np.ndarray:
    return np.asarray(trace.item_vectors, dtype=np.float64).reshape(len(trace.candidate_ids), -1)


def list_log_prob(trace: RetrievalTrace, z_eff: np.ndarray) -> float:
    """log P(chosen list) under Plackett-Luce with logits (s0 + <z_eff, v>) / tau."""
    v = _items(trace)
    logits = (np.asarray(trace.base_scores, dtype=np.float64) + v @ z_eff) / trace.tau
    remaining = np.ones(logits.shape[0], dtype=bool)
    total = 0.0
    for m in trace.chosen:
        rest = logits[remaining]
        top = rest.max()
        total += logits[m] - (top + np.log(np.exp(rest - top).sum()))
        remaining[m] = False
    return float(total)


def list_gradient(trace: RetrievalTrace) -> np.ndarray:
    """d log P(list) / d z_eff = (1/tau) sum_i (v_{m_i} - sum_{j in R_i} pi_i(j) v_j).

    R_i is the candidate set minus the cards chosen before step i, and
    pi_i(j) = pi_j / sum_{l in R_i} pi_l, with pi the trace's stored probabilities.
    """
    v = _items(trace)
    pi = np.asarray(trace.probs, dtype=np.float64)
    remaining = np.ones(pi.shape[0], dtype=bool)
    grad = np.zeros(v.shape[1])
    for m in trace.chosen:
        p = np.where(remaining, pi, 0.0)
        total = p.sum()
        # sampling falls back to uniform over R_i when pi underflows there; so does this
        p = p / total if total > 0 else remaining / remaining.sum()
        grad += v[m] - p @ v
        remaining[m] = False
    return grad / trace.tau


def heuristic_gradient(trace: RetrievalTrace) -> np.ndarray:
    """The reference code's order-free form: (1/tau)(mean_chosen v - sum_j pi_j v_j)."""
    v = _items(trace)
    pi = np.asarray(trace.probs, dtype=np.float64)
    return (v[trace.chosen].mean(axis=0) - pi @ v) / trace.tau


def restatement_gradient(trace: RetrievalTrace, restated: list[int]) -> np.ndarray:
    """Pairwise credit for restated cards: for each restated candidate r, v_r minus the
    mean item vector of the chosen cards ranked before it (all chosen cards when r was not
    chosen). Zero when nothing was ranked before it: the list already put it first."""
    v = _items(trace)
    grad = np.zeros(v.shape[1])
    for r in restated:
        before = trace.chosen[: trace.chosen.index(r)] if r in trace.chosen else list(trace.chosen)
        if before:
            grad += v[r] - v[before].mean(axis=0)
    return grad / trace.tau


def reinforce_update(
    vector: UserVector,
    trace: RetrievalTrace,
    judge: JudgeResult,
    cfg: ReinforceConfig,
    policy: PolicyConfig,
    restated: list[int] | None = None,
) -> tuple[UserVector, UpdateResult]:
    """One REINFORCE step, or the unchanged vector and the reason it was skipped.

    ``restated``: indices of candidates the user's message restated (a
    neg_constraint_restate turn). With ``cfg.restate_credit`` > 0 they add a supervised
    term to z_long: the user said which card the list should have put first."""
    reason = _skip_reason(vector, trace, judge)
    if reason:
        return vector, UpdateResult(applied=False, reason=reason)
    advantage = judge.g * (judge.reward - vector.baseline)
    credit = restated if restated and cfg.restate_credit > 0 and judge.label == "neg_constraint_restate" else []
    if abs(advantage) < cfg.min_advantage and not credit:
        return vector, UpdateResult(applied=False, advantage=advantage, reason="small advantage")

    d = len(trace.item_vectors[0])
    z_long = np.asarray(vector.z_long, dtype=np.float64) if vector.z_long else np.zeros(d)
    z_short = np.asarray(vector.z_short, dtype=np.float64) if vector.z_short else np.zeros(d)
    if cfg.gradient == "exact":
        grad = list_gradient(trace)
        # z_eff = beta_L z_long + beta_S z_short, so each half's gradient carries its beta
        step_long, step_short = cfg.eta_long * policy.beta_long, cfg.eta_short * policy.beta_short
    else:
        grad = heuristic_gradient(trace)
        step_long, step_short = cfg.eta_long, cfg.eta_short  # the reference has no beta here
    z_long = z_long + step_long * advantage * grad
    if credit:
        z_long = z_long + cfg.restate_credit * policy.beta_long * judge.g * restatement_gradient(trace, credit)
    z_short = (1.0 - cfg.decay_short) * z_short + step_short * advantage * grad
    baseline = (1.0 - cfg.alpha) * vector.baseline + cfg.alpha * judge.reward
    new = UserVector(
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
    if not trace.sampled:
        return "greedy trace"
    if vector.projection_version and vector.projection_version != trace.projection_version:
        return (
            f"projection version {trace.projection_version!r} of the trace differs from "
            f"{vector.projection_version!r} of the vector"
        )
    if vector.z_long and len(vector.z_long) != len(trace.item_vectors[0]):
        return "dimension mismatch"
    return ""


def reset_session(vector: UserVector) -> UserVector:
    """A new session: the short-term vector starts from zero; z_long and b persist."""
    return msgspec.structs.replace(vector, z_short=[0.0] * len(vector.z_short))
