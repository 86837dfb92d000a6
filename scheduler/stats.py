"""Profile-clustered bootstrap intervals and sign-flip permutation tests (plain numpy).

Sessions of one profile x method lane share a user and a memory, so they are not
independent draws: every resampling here moves whole profiles (clusters). Callers pass
one total per profile (a numerator and a denominator), and every statistic is a pooled
ratio sum(num) / sum(den): a mean when den counts sessions, an accuracy when den counts
probes, a rate per token when den counts tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

EXACT_MAX_CLUSTERS = 16  # enumerate all 2**k sign patterns up to this many profiles


class Interval(msgspec.Struct, frozen=True):
    """A point estimate with its confidence interval; all None when undefined."""

    value: float | None
    lo: float | None = None
    hi: float | None = None


def _weights(k: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, k) multiplicities of each cluster in each bootstrap resample."""
    idx = rng.integers(0, k, size=(reps, k))
    flat = (idx + np.arange(reps)[:, None] * k).ravel()
    return np.bincount(flat, minlength=reps * k).reshape(reps, k).astype(float)


def ratio_ci(
    num: Sequence[float],
    den: Sequence[float],
    reps: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """sum(num) / sum(den) with a percentile bootstrap interval over clusters."""
    n, d = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if n.size == 0 or d.sum() <= 0:
        return Interval(None)
    value = float(n.sum() / d.sum())
    w = _weights(n.size, reps, np.random.default_rng(seed))
    wn, wd = w @ n, w @ d
    ok = wd > 0  # a resample may hold only clusters with an empty denominator
    stats = wn[ok] / wd[ok]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return Interval(value, float(lo), float(hi))


def sign_flip_p(cluster_sums: Sequence[float], reps: int = 10000, seed: int = 0) -> float | None:
    """Two-sided p-value that the mean paired difference is zero.

    Under the null each profile's summed difference is as likely negated, so the
    statistic |sum(s_p * D_p)| is compared over sign patterns s: all 2**k of them for up
    to EXACT_MAX_CLUSTERS profiles, else ``reps`` seeded random ones. With k profiles the
    smallest attainable exact p is 2 / 2**k (k >= 6 is needed for p < 0.05).
    """
    sums = np.asarray(cluster_sums, dtype=float)
    k = sums.size
    if k == 0:
        return None
    observed = abs(sums.sum())
    if observed == 0.0:
        return 1.0
    tol = 1e-9 * max(1.0, observed)
    if k <= EXACT_MAX_CLUSTERS:
        bits = (np.arange(2**k)[:, None] >> np.arange(k)) & 1
        flipped = np.abs((bits * 2 - 1) @ sums)
        return float(np.mean(flipped >= observed - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(reps, k))
    hits = int(np.sum(np.abs(signs @ sums) >= observed - tol))
    return (hits + 1) / (reps + 1)  # the observed pattern counts as one draw


def ratio_diff_ci(
    num_a: Sequence[float],
    den_a: Sequence[float],
    num_b: Sequence[float],
    den_b: Sequence[float],
    reps: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b) on paired clusters (index i of every
    sequence is one profile), with a percentile bootstrap that resamples the clusters of
    both ratios together."""
    na, da, nb, db = (np.asarray(x, dtype=float) for x in (num_a, den_a, num_b, den_b))
    if na.size == 0 or da.sum() <= 0 or db.sum() <= 0:
        return Interval(None)
    value = float(na.sum() / da.sum() - nb.sum() / db.sum())
    w = _weights(na.size, reps, np.random.default_rng(seed))
    wda, wdb = w @ da, w @ db
    ok = (wda > 0) & (wdb > 0)
    stats = (w @ na)[ok] / wda[ok] - (w @ nb)[ok] / wdb[ok]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return Interval(value, float(lo), float(hi))
