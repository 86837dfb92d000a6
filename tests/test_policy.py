"""The retrieval policy: the bounded learned term, softmax, greedy lists, exploration by
Plackett-Luce sampling, traces."""

from __future__ import annotations

import numpy as np
import pytest

from vars_core.config import PolicyConfig
from vars_core.policy import (
    ACCEPT_LOG_P,
    effective_vector,
    greedy_top_k,
    learned_cap,
    learned_term,
    select,
    softmax,
)
from vars_core.types import UserVector

VERSION = "rand-4x3-s0"


def _vector(z_long, z_short, version=VERSION) -> UserVector:
    return UserVector(z_long=list(z_long), z_short=list(z_short), projection_version=version)


def test_effective_vector_weights_both_halves():
    cfg = PolicyConfig(beta_long=2.0, beta_short=5.0)
    z = effective_vector(_vector([1.0, -1.0], [0.5, 0.25]), cfg)
    np.testing.assert_allclose(z, [2.0 * 1.0 + 5.0 * 0.5, 2.0 * -1.0 + 5.0 * 0.25])


def test_the_learned_term_is_bounded_and_off_for_rejected_cards():
    log_p = np.log(np.array([0.9, 0.6, 0.5, 0.4, 0.01]))
    items = np.eye(5)
    z = np.array([50.0, -50.0, 0.3, 50.0, 50.0])
    cfg = PolicyConfig(list_size=2, kappa=1.5)
    cap = learned_cap(log_p, cfg)
    assert cap == pytest.approx(1.5 * np.sort(log_p)[::-1][:4].std())
    b, slopes = learned_term(log_p, items, z, cap, cfg)
    # accepted (P(yes) >= 0.5): c tanh(<z, v> / c), saturating at +-c
    np.testing.assert_allclose(b[:3], cap * np.tanh(z[:3] / cap))
    assert b[0] == pytest.approx(cap) and b[1] == pytest.approx(-cap)
    np.testing.assert_allclose(slopes[:3], 1 - np.tanh(z[:3] / cap) ** 2)
    # rejected: no learned term however large <z, v>, and no gradient through it
    assert b[3] == 0 and b[4] == 0 and slopes[3] == 0 and slopes[4] == 0
    assert ACCEPT_LOG_P == pytest.approx(np.log(0.5))


def test_the_linear_ablation_adds_the_inner_product_everywhere():
    log_p = np.log(np.array([0.9, 0.1]))
    items = np.array([[1.0, 0.0], [1.0, 2.0]])
    b, slopes = learned_term(log_p, items, np.array([0.25, -0.5]), 0.1, PolicyConfig(learned_term="linear"))
    np.testing.assert_allclose(b, [0.25, -0.75])
    np.testing.assert_allclose(slopes, [1.0, 1.0])


def test_softmax_is_stable_and_uses_tau():
    p = softmax(np.array([1000.0, 1001.0, 999.0]))
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)
    e = np.exp([-1.0, 0.0, -2.0])
    np.testing.assert_allclose(p, e / e.sum())
    hot = softmax(np.array([0.0, 1.0]), tau=0.5)
    assert hot[1] == pytest.approx(np.exp(2.0) / (1 + np.exp(2.0)))
    with pytest.raises(ValueError):
        softmax(np.array([1.0]), tau=0.0)


def test_greedy_is_top_k_with_ties_in_candidate_order():
    assert greedy_top_k(np.array([0.1, 0.9, 0.5, 0.9, 0.2]), 3) == [1, 3, 2]


def _setup(n=6, d=3, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"c{i}" for i in range(n)]
    return ids, np.log(rng.uniform(0.3, 1, n)), rng.normal(size=(n, d))


def test_greedy_select_records_a_full_trace():
    ids, log_p, items = _setup()
    cfg = PolicyConfig(list_size=3, tau=0.7)
    vec = _vector([0.1, 0.2, -0.3], [0.0, 0.1, 0.0])
    trace = select("u", ids, log_p, items, vec, cfg, np.random.default_rng(1), True, VERSION)
    b, slopes = learned_term(log_p, items, effective_vector(vec, cfg), learned_cap(log_p, cfg), cfg)
    s = log_p + b
    assert trace.chosen == list(np.argsort(-s)[:3])
    assert not trace.sampled and trace.tau == 0.7 and trace.projection_version == VERSION
    assert trace.candidate_ids == ids
    np.testing.assert_allclose(trace.item_vectors, items)
    np.testing.assert_allclose(trace.base_scores, log_p)
    np.testing.assert_allclose(trace.learned, b)
    np.testing.assert_allclose(trace.slopes, slopes)
    assert trace.cap == pytest.approx(learned_cap(log_p, cfg))
    np.testing.assert_allclose(trace.probs, softmax(s, 0.7))


def test_serving_is_greedy_unless_a_turn_explores():
    ids, log_p, items = _setup(n=8)
    vec = _vector([0.0] * 3, [0.0] * 3)
    rng = np.random.default_rng(7)
    greedy = [select("u", ids, log_p, items, vec, PolicyConfig(), rng, True, VERSION) for _ in range(200)]
    assert not any(t.sampled for t in greedy)
    assert all(t.chosen == greedy_top_k(log_p, 5) for t in greedy)
    mixed = [select("u", ids, log_p, items, vec, PolicyConfig(epsilon=0.3), rng, True, VERSION) for _ in range(2000)]
    share = np.mean([t.sampled for t in mixed])
    assert 0.26 < share < 0.34  # epsilon = 0.3
    # rag (learning off) never explores, whatever epsilon says
    rag = [select("u", ids, log_p, items, None, PolicyConfig(epsilon=1.0), rng, False, VERSION) for _ in range(50)]
    assert not any(t.sampled for t in rag)


def test_sampled_list_has_k_distinct_cards_and_is_reproducible():
    ids, s0, items = _setup(n=8)
    cfg = PolicyConfig(list_size=5, epsilon=1.0)
    vec = _vector([0.0] * 3, [0.0] * 3)
    a = select("u", ids, s0, items, vec, cfg, np.random.default_rng(3), True, VERSION)
    b = select("u", ids, s0, items, vec, cfg, np.random.default_rng(3), True, VERSION)
    assert a.sampled and a.chosen == b.chosen
    assert len(a.chosen) == 5 == len(set(a.chosen))
    small = select(
        "u", ids[:2], s0[:2], items[:2], vec, cfg, np.random.default_rng(3), True, VERSION
    )
    assert sorted(small.chosen) == [0, 1]  # k = min(list_size, n)


def test_first_pick_frequencies_match_pi():
    ids, s0, items = _setup(n=6)
    cfg = PolicyConfig(list_size=2, tau=0.3, epsilon=1.0)
    vec = _vector([0.2, -0.1, 0.4], [0.0, 0.0, 0.0])
    rng = np.random.default_rng(42)
    draws = 20_000
    counts = np.zeros(6)
    second = np.zeros(6)
    for _ in range(draws):
        trace = select("u", ids, s0, items, vec, cfg, rng, True, VERSION)
        counts[trace.chosen[0]] += 1
        second[trace.chosen[1]] += 1
    pi = np.asarray(trace.probs)
    expected = draws * pi
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 20.5  # chi-square, 5 degrees of freedom, p = 0.001
    # second pick: pi renormalized over the cards not yet chosen, averaged over the first
    p2 = np.array([sum(pi[f] * pi[j] / (1 - pi[f]) for f in range(6) if f != j) for j in range(6)])
    chi2 = ((second - draws * p2) ** 2 / (draws * p2)).sum()
    assert chi2 < 20.5


def test_sampling_follows_scores_not_uniform():
    ids = ["a", "b"]
    cfg = PolicyConfig(list_size=1, tau=0.1, epsilon=1.0)
    rng = np.random.default_rng(0)
    s0, items = np.array([0.0, -1.0]), np.zeros((2, 1))
    picks = [select("u", ids, s0, items, None, cfg, rng, True, "v").chosen[0] for _ in range(500)]
    assert picks.count(0) > 480  # pi_a = 1 / (1 + e^-10)


def test_vector_moves_the_ranking():
    ids = ["a", "b", "c"]
    s0 = np.array([-0.1, -0.2, -0.3])
    items = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    cfg = PolicyConfig(list_size=1, kappa=5.0)  # cap 0.41: b gains 0.41 tanh(0.2 / 0.41) = 0.19
    rng = np.random.default_rng(0)
    lifted = _vector([0.0, 0.1], [0.0, 0.0])  # z_eff = (0, 0.2)
    assert select("u", ids, s0, items, lifted, cfg, rng, False, VERSION).chosen == [1]
    assert select("u", ids, s0, items, None, cfg, rng, False, VERSION).chosen == [0]
    # a vector of another projection means nothing in this item space: ignored
    foreign = _vector([0.0, 0.1], [0.0, 0.0], version="pca-v2")
    assert select("u", ids, s0, items, foreign, cfg, rng, False, VERSION).chosen == [0]


def test_empty_candidates_give_an_empty_trace():
    trace = select(
        "u",
        [],
        np.zeros(0),
        np.zeros((0, 3)),
        None,
        PolicyConfig(),
        np.random.default_rng(0),
        True,
        VERSION,
    )
    assert trace.candidate_ids == [] and trace.chosen == [] and trace.probs == []


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError):
        select(
            "u",
            ["a", "b"],
            np.zeros(3),
            np.zeros((2, 2)),
            None,
            PolicyConfig(),
            np.random.default_rng(0),
            True,
            VERSION,
        )
    with pytest.raises(ValueError):
        select(
            "u",
            ["a"],
            np.zeros(1),
            np.zeros((1, 2)),
            _vector([0.0] * 3, [0.0] * 3),
            PolicyConfig(),
            np.random.default_rng(0),
            True,
            VERSION,
        )
