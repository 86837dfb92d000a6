"""REINFORCE: the exact list gradient, one worked update, and the skip rules."""

from __future__ import annotations

import numpy as np
import pytest

from vars_core.config import PolicyConfig, ReinforceConfig
from vars_core.policy import plackett_luce_sample, softmax
from vars_core.reinforce import (
    heuristic_gradient,
    list_gradient,
    list_log_prob,
    reinforce_update,
    reset_session,
)
from vars_core.types import JudgeResult, RetrievalTrace, UserVector

V = "rand-2-test"


def _trace(items, pi, chosen, s0=None, tau=1.0, sampled=True, version=V) -> RetrievalTrace:
    n = len(items)
    return RetrievalTrace(
        user_id="u",
        candidate_ids=[f"c{i}" for i in range(n)],
        item_vectors=[list(map(float, v)) for v in items],
        base_scores=list(s0) if s0 is not None else [0.5] * n,
        probs=list(pi),
        chosen=list(chosen),
        tau=tau,
        sampled=sampled,
        projection_version=version,
    )


def _judge(reward=-1.0, g=0.8, apply=True) -> JudgeResult:
    return JudgeResult(
        label="neg_constraint_restate", confidence=g, reward=reward, apply=apply, g=g
    )


def _vector(z_long=(0.1, -0.2), z_short=(0.3, 0.4), baseline=0.2, version=V) -> UserVector:
    return UserVector(list(z_long), list(z_short), baseline=baseline, projection_version=version)


# --------------------------------------------------------------------------- gradient


@pytest.mark.parametrize("seed", range(8))
def test_exact_gradient_matches_finite_differences(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 10))
    d = int(rng.integers(2, 7))
    k = n if seed % 2 else int(rng.integers(1, n))  # k = n and k < n
    tau = [0.5, 1.0, 2.0][seed % 3]
    items = rng.normal(size=(n, d))
    s0 = rng.uniform(0, 1, n)
    z = rng.normal(scale=0.5, size=d)
    pi = softmax(s0 + items @ z, tau)
    trace = _trace(items, pi, plackett_luce_sample(pi, k, rng), s0=s0, tau=tau)

    h = 1e-5
    numeric = np.array(
        [
            (list_log_prob(trace, z + h * e) - list_log_prob(trace, z - h * e)) / (2 * h)
            for e in np.eye(d)
        ]
    )
    np.testing.assert_allclose(list_gradient(trace), numeric, atol=1e-6, rtol=0)


def test_log_prob_of_a_full_permutation_sums_to_one():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(3, 2))
    z = np.array([0.3, -0.2])
    pi = softmax(0.5 + items @ z)
    perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    total = sum(np.exp(list_log_prob(_trace(items, pi, p), z)) for p in perms)
    assert total == pytest.approx(1.0)


def test_gradients_by_hand():
    # v0 = (1, 0), v1 = (0, 1), v2 = (1, 1); stored pi = (0.5, 0.25, 0.25); list = [1, 0]
    items = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    trace = _trace(items, [0.5, 0.25, 0.25], [1, 0])
    # step 1, R = {0,1,2}: E v = (0.5 + 0.25, 0.25 + 0.25) = (0.75, 0.5); v1 - E v = (-0.75, 0.5)
    # step 2, R = {0,2}: pi = (2/3, 1/3), E v = (1, 1/3); v0 - E v = (0, -1/3)
    np.testing.assert_allclose(list_gradient(trace), [-0.75, 0.5 - 1 / 3])
    # heuristic: mean(v1, v0) - E v = (0.5, 0.5) - (0.75, 0.5)
    np.testing.assert_allclose(heuristic_gradient(trace), [-0.25, 0.0])
    half = _trace(items, [0.5, 0.25, 0.25], [1, 0], tau=2.0)
    np.testing.assert_allclose(list_gradient(half), [-0.375, (0.5 - 1 / 3) / 2])


# --------------------------------------------------------------------------- update


def test_one_update_by_hand():
    items = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    # s0 disagrees with the stored pi on purpose: the update must use the stored pi
    trace = _trace(items, [0.5, 0.25, 0.25], [1, 0], s0=[0.9, 0.1, 0.5])
    new, result = reinforce_update(
        _vector(), trace, _judge(reward=-1.0, g=0.8), ReinforceConfig(), PolicyConfig()
    )
    # A = 0.8 * (-1 - 0.2) = -0.96; G = (-0.75, 1/6)
    assert result.applied and result.advantage == pytest.approx(-0.96)
    # z_long += 0.001 * 2 * -0.96 * G = -0.00192 * G = (0.00144, -0.00032)
    np.testing.assert_allclose(new.z_long, [0.10144, -0.20032])
    # z_short = 0.9 * (0.3, 0.4) + 0.002 * 5 * -0.96 * G = (0.27, 0.36) + (0.0072, -0.0016)
    np.testing.assert_allclose(new.z_short, [0.2772, 0.3584])
    # b = 0.95 * 0.2 + 0.05 * -1
    assert new.baseline == pytest.approx(0.14)
    assert new.updates == 1 and new.projection_version == V


def test_heuristic_update_has_no_beta():
    items = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    trace = _trace(items, [0.5, 0.25, 0.25], [1, 0])
    cfg = ReinforceConfig(eta_long=0.01, eta_short=0.05, gradient="heuristic")
    new, result = reinforce_update(
        _vector(), trace, _judge(reward=-1.0, g=0.8), cfg, PolicyConfig()
    )
    # G_h = (-0.25, 0); z_long += 0.01 * -0.96 * G_h; z_short = 0.9 z_short + 0.05 * -0.96 * G_h
    np.testing.assert_allclose(new.z_long, [0.1 + 0.0024, -0.2])
    np.testing.assert_allclose(new.z_short, [0.27 + 0.012, 0.36])
    assert result.applied and new.baseline == pytest.approx(0.14)


def test_positive_reward_raises_the_chosen_list():
    rng = np.random.default_rng(5)
    items = rng.normal(size=(6, 4))
    pi = softmax(items @ np.zeros(4))
    trace = _trace(items, pi, [2, 4])
    vec = UserVector([0.0] * 4, [0.0] * 4, projection_version=V)
    new, _ = reinforce_update(
        vec, trace, _judge(reward=1.0, g=1.0), ReinforceConfig(eta_long=0.1), PolicyConfig()
    )
    z_old = np.zeros(4)
    z_new = 2.0 * np.asarray(new.z_long) + 5.0 * np.asarray(new.z_short)
    assert list_log_prob(trace, z_new) > list_log_prob(trace, z_old)


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
        (_trace([[1.0, 0.0]], [1.0], [0], sampled=False), _judge(), _vector(), "greedy trace"),
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


def test_restatement_gradient_moves_the_restated_card_above_those_before_it():
    from vars_core.reinforce import restatement_gradient

    items = [[1.0, 0.0], [0.0, 1.0], [0.2, 0.9]]
    trace = _trace(items, [0.4, 0.4, 0.2], chosen=[0, 1])
    # card 1 was second: it moves above card 0 only
    assert np.allclose(restatement_gradient(trace, [1]), [-1.0, 1.0])
    # card 2 was not chosen: it moves above both chosen cards (v2 - their mean)
    assert np.allclose(restatement_gradient(trace, [2]), [-0.3, 0.4])
    # card 0 was already first: nothing to move
    assert np.allclose(restatement_gradient(trace, [0]), [0.0, 0.0])


def test_restatement_credit_only_on_restate_turns_and_when_on():
    items = [[1.0, 0.0], [0.0, 1.0]]
    trace = _trace(items, [0.5, 0.5], chosen=[0, 1])
    vector = _vector(z_long=(0.0, 0.0), z_short=(0.0, 0.0), baseline=-1.0)
    restate = JudgeResult(label="neg_constraint_restate", confidence=1.0, reward=-1.0, apply=True, g=1.0)
    off, _ = reinforce_update(vector, trace, restate, ReinforceConfig(), PolicyConfig(), restated=[1])
    on, _ = reinforce_update(vector, trace, restate, ReinforceConfig(restate_credit=0.1), PolicyConfig(), restated=[1])
    # advantage 0 (reward == baseline): only the credit moves z_long, towards card 1 over card 0
    assert np.allclose(off.z_long, [0.0, 0.0])
    assert np.allclose(on.z_long, [-0.2, 0.2])  # 0.1 * beta_L 2.0 * g 1.0 * (v1 - v0)
    praise = JudgeResult(label="pos_praise", confidence=1.0, reward=0.8, apply=True, g=1.0)
    cfg = ReinforceConfig(restate_credit=0.1, eta_long=0.0, eta_short=0.0)
    unchanged, _ = reinforce_update(vector, trace, praise, cfg, PolicyConfig(), restated=[1])
    assert np.allclose(unchanged.z_long, [0.0, 0.0])


def test_restated_notes_match_note_form_only():
    from vars_core.notes import restated_notes

    notes = ["When you give code, use snake_case.", "When a list has steps, number them.", ""]
    message = "As I mentioned before: when a list has steps, number them. Please revise your answer."
    assert restated_notes(message, notes) == [1]
    assert restated_notes("Please number the steps.", notes) == []  # a paraphrase is not matched
