"""Learning the user vector: the exact list gradient through the bounded learned term, the
greedy off-policy update, one worked update, the skip rules, and the pairwise credit."""

from __future__ import annotations

import numpy as np
import pytest

from vars_core.config import PolicyConfig, ReinforceConfig
from vars_core.policy import learned_cap, learned_term, plackett_luce_sample, softmax
from vars_core.reinforce import (
    greedy_gradient,
    list_gradient,
    list_log_prob,
    pairwise_credit,
    policy_gradient,
    reinforce_update,
    reset_session,
)
from vars_core.types import JudgeResult, RetrievalTrace, UserVector

V = "rand-2-test"


def _trace(items, pi, chosen, s0=None, tau=1.0, sampled=False, version=V, learned=(), slopes=(), cap=0.0):
    n = len(items)
    return RetrievalTrace(
        user_id="u",
        candidate_ids=[f"c{i}" for i in range(n)],
        item_vectors=[list(map(float, v)) for v in items],
        base_scores=list(s0) if s0 is not None else [-0.5] * n,
        probs=list(pi),
        chosen=list(chosen),
        tau=tau,
        sampled=sampled,
        projection_version=version,
        learned=list(learned),
        slopes=list(slopes),
        cap=cap,
    )


def _judge(reward=-1.0, g=0.8, apply=True) -> JudgeResult:
    return JudgeResult(
        label="neg_constraint_restate", confidence=g, reward=reward, apply=apply, g=g
    )


def _vector(z_long=(0.1, -0.2), z_short=(0.3, 0.4), baseline=0.2, version=V) -> UserVector:
    return UserVector(list(z_long), list(z_short), baseline=baseline, projection_version=version)


def _served(rng, n, d, k, tau, z, cfg, sampled=True) -> RetrievalTrace:
    """A trace as the policy writes it: some cards rejected (P(yes) < 0.5), the bounded term
    at ``z``, pi from s0 + b, a Plackett-Luce list."""
    log_p = np.log(rng.uniform(0.05, 1.0, n))
    items = rng.normal(size=(n, d))
    cap = learned_cap(log_p, cfg)
    b, slopes = learned_term(log_p, items, z, cap, cfg)
    pi = softmax(log_p + b, tau)
    chosen = plackett_luce_sample(pi, k, rng) if sampled else list(np.argsort(-(log_p + b))[:k])
    return _trace(items, pi, chosen, s0=log_p, tau=tau, sampled=sampled, learned=b, slopes=slopes, cap=cap)


# --------------------------------------------------------------------------- gradient


@pytest.mark.parametrize("seed", range(8))
def test_exact_gradient_matches_finite_differences_through_the_tanh(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 10))
    d = int(rng.integers(2, 7))
    k = n if seed % 2 else int(rng.integers(1, n))  # k = n and k < n
    tau = [0.5, 1.0, 2.0][seed % 3]
    cfg = PolicyConfig(list_size=max(1, k // 2), kappa=[0.5, 1.0, 3.0][seed % 3], tau=tau)
    z = rng.normal(scale=0.5, size=d)
    trace = _served(rng, n, d, k, tau, z, cfg)

    h = 1e-6
    numeric = np.array(
        [
            (list_log_prob(trace, z + h * e, cfg) - list_log_prob(trace, z - h * e, cfg)) / (2 * h)
            for e in np.eye(d)
        ]
    )
    np.testing.assert_allclose(list_gradient(trace), numeric, atol=1e-5, rtol=0)


def test_log_prob_of_a_full_permutation_sums_to_one():
    rng = np.random.default_rng(0)
    cfg = PolicyConfig(list_size=2)
    z = np.array([0.3, -0.2])
    trace = _served(rng, 3, 2, 3, 1.0, z, cfg)
    perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    total = sum(np.exp(list_log_prob(_with_list(trace, p), z, cfg)) for p in perms)
    assert total == pytest.approx(1.0)


def _with_list(trace: RetrievalTrace, chosen) -> RetrievalTrace:
    import msgspec

    return msgspec.structs.replace(trace, chosen=list(chosen))


def test_gradients_by_hand():
    # v0 = (1, 0), v1 = (0, 1), v2 = (1, 1); stored pi = (0.5, 0.25, 0.25); list = [1, 0]
    items = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    trace = _trace(items, [0.5, 0.25, 0.25], [1, 0], sampled=True)
    # step 1, R = {0,1,2}: E v = (0.5 + 0.25, 0.25 + 0.25) = (0.75, 0.5); v1 - E v = (-0.75, 0.5)
    # step 2, R = {0,2}: pi = (2/3, 1/3), E v = (1, 1/3); v0 - E v = (0, -1/3)
    np.testing.assert_allclose(list_gradient(trace), [-0.75, 0.5 - 1 / 3])
    # greedy, the reference's form scaled by k: (v1 + v0) - 2 E v = (1, 1) - (1.5, 1)
    np.testing.assert_allclose(greedy_gradient(trace), [-0.5, 0.0])
    half = _trace(items, [0.5, 0.25, 0.25], [1, 0], tau=2.0)
    np.testing.assert_allclose(greedy_gradient(half), [-0.25, 0.0])
    # the trace says which: a sampled list takes the exact gradient, a greedy one the surrogate
    np.testing.assert_allclose(policy_gradient(trace), list_gradient(trace))
    np.testing.assert_allclose(policy_gradient(half), greedy_gradient(half))


def test_the_slopes_scale_each_card_and_silence_rejected_ones():
    items = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    trace = _trace(items, [0.5, 0.25, 0.25], [1, 0], slopes=[0.0, 1.0, 0.5])
    # u0 = 0, u1 = (0, 1), u2 = (0.5, 0.5): E u = (0.125, 0.375); (u1 + u0) - 2 E u
    np.testing.assert_allclose(greedy_gradient(trace), [-0.25, 0.25])


# --------------------------------------------------------------------------- update


def test_one_greedy_update_by_hand():
    items = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    # s0 disagrees with the stored pi on purpose: the update must use the stored pi
    trace = _trace(items, [0.5, 0.25, 0.25], [1, 0], s0=[-0.1, -2.0, -0.5])
    new, result = reinforce_update(
        _vector(), trace, _judge(reward=-1.0, g=0.8), ReinforceConfig(), PolicyConfig()
    )
    # A = 0.8 * (-1 - 0.2) = -0.96; G = (-0.5, 0)
    assert result.applied and result.advantage == pytest.approx(-0.96)
    # z_long += 0.001 * 2 * -0.96 * G = (0.00096, 0)
    np.testing.assert_allclose(new.z_long, [0.10096, -0.2])
    # z_short = 0.9 * (0.3, 0.4) + 0.002 * 5 * -0.96 * G = (0.27, 0.36) + (0.0048, 0)
    np.testing.assert_allclose(new.z_short, [0.2748, 0.36])
    # b = 0.95 * 0.2 + 0.05 * -1
    assert new.baseline == pytest.approx(0.14)
    assert new.updates == 1 and new.projection_version == V


def test_a_greedy_trace_is_updated_and_a_sampled_one_takes_the_exact_step():
    items = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    vec = _vector(z_long=(0.0, 0.0), z_short=(0.0, 0.0), baseline=0.0)
    cfg = ReinforceConfig(eta_long=0.1, eta_short=0.0)
    greedy, r1 = reinforce_update(vec, _trace(items, [0.5, 0.25, 0.25], [1, 0]), _judge(1.0, 1.0), cfg, PolicyConfig())
    sampled, r2 = reinforce_update(
        vec, _trace(items, [0.5, 0.25, 0.25], [1, 0], sampled=True), _judge(1.0, 1.0), cfg, PolicyConfig()
    )
    assert r1.applied and r2.applied
    np.testing.assert_allclose(greedy.z_long, 0.2 * np.array([-0.5, 0.0]))
    np.testing.assert_allclose(sampled.z_long, 0.2 * np.array([-0.75, 0.5 - 1 / 3]))


def test_positive_reward_raises_the_chosen_list():
    rng = np.random.default_rng(5)
    cfg = PolicyConfig(list_size=2)
    trace = _served(rng, 6, 4, 2, 1.0, np.zeros(4), cfg)
    vec = UserVector([0.0] * 4, [0.0] * 4, projection_version=V)
    new, _ = reinforce_update(vec, trace, _judge(reward=1.0, g=1.0), ReinforceConfig(eta_long=0.1), cfg)
    z_new = 2.0 * np.asarray(new.z_long) + 5.0 * np.asarray(new.z_short)
    assert list_log_prob(trace, z_new, cfg) > list_log_prob(trace, np.zeros(4), cfg)


def test_fresh_vector_takes_the_trace_projection():
    trace = _trace([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5], [0])
    new, result = reinforce_update(
        UserVector([], []), trace, _judge(), ReinforceConfig(), PolicyConfig()
    )
    assert result.applied and len(new.z_long) == 2 == len(new.z_short)
    assert new.projection_version == V


# --------------------------------------------------------------------------- skips


@pytest.mark.parametrize(
    ("trace", "judge", "vector", "reason"),
    [
        (_trace([[1.0, 0.0]], [1.0], [0]), _judge(apply=False, g=0.0), _vector(), "gated"),
        (_trace([], [], []), _judge(), _vector(), "empty trace"),
        (_trace([[1.0, 0.0]], [1.0], [0], version="pca-v2"), _judge(), _vector(), "projection"),
        (
            _trace([[1.0, 0.0]], [1.0], [0]),
            _judge(reward=0.2, g=1.0),
            _vector(baseline=0.2),
            "small advantage",
        ),
        (_trace([[1.0, 0.0, 0.0]], [1.0], [0]), _judge(), _vector(), "dimension"),
    ],
)
def test_skips_leave_the_vector_alone(trace, judge, vector, reason):
    new, result = reinforce_update(vector, trace, judge, ReinforceConfig(), PolicyConfig())
    assert not result.applied and reason in result.reason
    assert new == vector  # z_short does not decay and b does not move without an update


def test_baseline_moves_only_on_applied_updates():
    trace = _trace([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5], [0])
    vec = _vector(baseline=0.0)
    rewards = [(1.0, True), (1.0, False), (-1.0, True), (0.8, False)]
    expected = 0.0
    for reward, apply in rewards:
        vec, result = reinforce_update(
            vec, trace, _judge(reward=reward, g=1.0, apply=apply), ReinforceConfig(), PolicyConfig()
        )
        if apply:
            expected = 0.95 * expected + 0.05 * reward
        assert result.applied == apply
        assert vec.baseline == pytest.approx(expected)
    assert vec.updates == 2


def test_reset_session_zeroes_only_z_short():
    vec = UserVector([0.1, 0.2], [0.3, 0.4], baseline=0.5, updates=7, projection_version=V)
    out = reset_session(vec)
    assert out.z_short == [0.0, 0.0]
    assert (out.z_long, out.baseline, out.updates, out.projection_version) == (
        [0.1, 0.2],
        0.5,
        7,
        V,
    )


# --------------------------------------------------------------------------- pairwise credit


def _pair_trace():
    # c0 = r (ranked second), c1 = c (ranked first), c2 unrelated
    items = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    return _trace(
        items, [0.3, 0.5, 0.2], [1, 0], s0=[-0.4, -0.2, -0.9],
        learned=[0.05, 0.1, 0.0], slopes=[1.0, 0.5, 1.0], cap=0.3,
    )


def test_a_pairwise_step_moves_z_toward_r_and_away_from_c():
    trace = _pair_trace()
    vec = _vector(z_long=(0.0, 0.0), z_short=(0.0, 0.0))
    cfg, policy = ReinforceConfig(eta_pairwise=0.1), PolicyConfig()
    new, steps = pairwise_credit(vec, trace, "c0", None, ["c1"], cfg, policy)
    # Delta = ((-0.4 + 0.05) - (-0.2 + 0.1)) / 1 = -0.25; sigmoid(0.25) = 0.5622
    # z_long += 0.1 * 2 * 0.5622 * (u_r - u_c), u_r = (1, 0), u_c = 0.5 * (0, 1)
    weight = 1 / (1 + np.exp(-0.25))
    np.testing.assert_allclose(new.z_long, 0.2 * weight * np.array([1.0, -0.5]))
    assert steps[0].restated == "c0" and steps[0].conflicting == "c1"
    assert steps[0].delta == pytest.approx(-0.25)
    assert new.pairwise_steps == 1 and new.updates == 0 and new.baseline == vec.baseline
    v = np.asarray(trace.item_vectors)
    assert np.asarray(new.z_long) @ (v[0] - v[1]) > 0  # r now scores above c


def test_a_restated_card_outside_the_candidates_uses_its_stored_item_and_z_term_alone():
    trace = _pair_trace()
    vec = _vector(z_long=(0.05, 0.0), z_short=(0.0, 0.0))
    policy = PolicyConfig()
    new, steps = pairwise_credit(vec, trace, "fresh", [0.0, -1.0], ["c1"], ReinforceConfig(eta_pairwise=0.1), policy)
    # s_r = b_r = 0.3 tanh(<z_eff, v_r> / 0.3) = 0 (z_eff = (0.1, 0) is orthogonal to v_r)
    delta = (0.0 - (-0.2 + 0.1)) / 1.0
    assert steps[0].delta == pytest.approx(delta)
    u_r, u_c = np.array([0.0, -1.0]), np.array([0.0, 0.5])
    np.testing.assert_allclose(new.z_long, [0.05, 0.0] + 0.2 / (1 + np.exp(delta)) * (u_r - u_c))


def test_no_credit_when_off_unknown_or_across_projections():
    trace = _pair_trace()
    vec = _vector()
    for cfg, restated, item, against, version in [
        (ReinforceConfig(eta_pairwise=0.0), "c0", None, ["c1"], V),
        (ReinforceConfig(), "c0", None, [], V),
        (ReinforceConfig(), "gone", None, ["c1"], V),  # not a candidate, no stored item
        (ReinforceConfig(), "c0", None, ["c1"], "pca-v2"),
    ]:
        new, steps = pairwise_credit(_vector(version=version), trace, restated, item, against, cfg, PolicyConfig())
        assert steps == [] and new == _vector(version=version)
    assert vec.pairwise_steps == 0
