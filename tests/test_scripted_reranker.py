"""The scripted world's reranker (a stated ROC AUC, calibrated log-odds, noise keyed on the
card and the request) and its conflict judge (the catalog's groups, a stated error rate)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vars_core.config import EngineConfig, load_config
from vars_core.conflicts import table_conflict
from vars_core.engine import Engine
from vars_core.rerankers import MIN_LOG_P, make_reranker
from vars_core.scripted.catalog import catalog, conflict_groups
from vars_core.scripted.conflicts import ScriptedConflictJudge
from vars_core.scripted.context import CUES, DOMAINS, request_header
from vars_core.scripted.reranker import ScriptedReranker, condition_trigger, sigma_for_auc


def _requests(n: int) -> list[str]:
    """Openings of every domain with no cue or one cue, over distinct problems."""
    out = []
    for i, (domain, cue) in enumerate(itertools.cycle(itertools.product(DOMAINS, (None, *CUES)))):
        if i >= n:
            break
        header = request_header(domain, [cue] if cue else [])
        out.append(f"{header}\n\nProblem number {i}: what is {i} + {i}?")
    return out


def _auc(positive: list[float], negative: list[float]) -> float:
    pos, neg = np.asarray(positive), np.asarray(negative)
    wins = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    return float(wins)


@pytest.mark.parametrize("auc", [0.75, 0.85, 0.95])
def test_its_scores_separate_holding_cards_with_the_stated_auc(auc):
    reranker = ScriptedReranker(auc=auc)
    notes = [e.note for e in catalog()]
    holds, not_holds = [], []
    for request in _requests(120):
        scores = reranker.score(request, notes)
        assert scores.shape == (len(notes),)
        assert np.all(scores <= 0) and np.all(scores >= MIN_LOG_P)
        for entry, s in zip(catalog(), scores, strict=True):
            (holds if entry.trigger in _features(request) else not_holds).append(s)
    assert len(holds) > 500 and len(not_holds) > 2000
    assert _auc(holds, not_holds) == pytest.approx(auc, abs=0.02)


def _features(request: str) -> frozenset[str]:
    from vars_core.scripted.context import context_of

    return context_of(request)


def test_its_log_odds_are_calibrated():
    """x is the log-likelihood ratio: among cards scored near x, the share that hold is
    sigmoid(x) when holding and non-holding cards are equally many."""
    reranker = ScriptedReranker(auc=0.85)
    rng = np.random.default_rng(0)
    xs, labels = [], []
    request = _requests(1)[0]
    for i in range(20000):
        holds = bool(rng.integers(2))
        note = f"When {'answering any question' if holds else 'writing python code'}, rule {i}."
        xs.append(reranker.log_odds(request, note))
        labels.append(holds)
    xs, labels = np.asarray(xs), np.asarray(labels)
    for lo, hi in [(-2.5, -1.5), (-0.5, 0.5), (1.5, 2.5)]:
        inside = (xs >= lo) & (xs < hi)
        expected = np.mean(1 / (1 + np.exp(-xs[inside])))
        assert labels[inside].mean() == pytest.approx(expected, abs=0.03)


def test_its_noise_is_keyed_on_the_note_and_the_request_never_the_user():
    reranker = ScriptedReranker()
    request, other = _requests(2)
    notes = [e.note for e in catalog()[:10]]
    a = reranker.score(request, notes)
    np.testing.assert_array_equal(a, ScriptedReranker().score(request, notes))  # no state
    np.testing.assert_array_equal(a[3:], reranker.score(request, notes[3:]))  # per note
    assert not np.array_equal(a, reranker.score(other, notes))  # another request, other noise


def test_it_judges_the_session_opening_not_the_latest_message():
    reranker = make_reranker("scripted", auc=0.85)
    assert reranker.reads_opening
    from vars_core.rerankers import bind_reranker

    opening = _requests(1)[0]
    notes = {"a": catalog()[0].note}
    bound = bind_reranker(reranker, f"{opening}\nAs I mentioned before: something.", notes, opening)
    np.testing.assert_array_equal(bound(["a"], np.zeros(1)), reranker.score(opening, [notes["a"]]))


def test_sigma_follows_the_auc_and_bad_auc_is_refused():
    assert sigma_for_auc(0.5) == 0.0
    assert sigma_for_auc(0.85) == pytest.approx(np.sqrt(2) * 1.0364, abs=1e-3)
    for bad in (0.4, 1.0, 1.5):
        with pytest.raises(ValueError, match="auc"):
            ScriptedReranker(auc=bad)


def test_an_unknown_condition_holds_always():
    assert condition_trigger("When answering any request, be brief.") == "any"
    assert condition_trigger("When writing python code, use snake_case names.") == "code"


def test_scripted_campaigns_use_it_and_live_traffic_does_not():
    engine = Engine(EngineConfig())
    assert isinstance(engine.reranker_for("campaign"), ScriptedReranker)
    assert engine.reranker_for("live") is None  # the "none" reranker
    assert engine.reranker_for("campaign").auc == 0.85
    llm_world = Engine(load_config({"simulator": "llm"}))
    assert llm_world.reranker_for("campaign") is None
    ablation = Engine(load_config({"reranker": {"kind": "none"}}))
    assert ablation.reranker_for("campaign") is None
    pinned = Engine(load_config({"reranker": {"kind": "scripted", "auc": 0.95}}))
    assert pinned.reranker_for("live").auc == 0.95


# --------------------------------------------------------------------------- conflict judge


def test_the_scripted_conflict_judge_knows_the_groups_and_errs_at_its_rate():
    perfect = ScriptedConflictJudge(error_rate=0.0)
    groups = conflict_groups()
    for a, b in groups.values():
        assert perfect(a.action, b.action) and perfect(b.action, a.action)
    actions = [e.action for e in catalog()]
    pairs = list(itertools.combinations(actions, 2))
    truth = [perfect(a, b) for a, b in pairs]
    assert sum(truth) == len(groups)
    noisy = ScriptedConflictJudge(error_rate=0.2)
    wrong = np.mean([noisy(a, b) != t for (a, b), t in zip(pairs, truth, strict=True)])
    assert wrong == pytest.approx(0.2, abs=0.04)
    # the same pair always gets the same verdict, in either order
    assert all(noisy(a, b) == noisy(b, a) == noisy(a, b) for a, b in pairs[:200])


def test_the_scripted_conflict_judge_defers_to_the_table_outside_the_catalog():
    judge = ScriptedConflictJudge(error_rate=0.0)
    assert judge("prefer short answers", "give me long detailed answers") == table_conflict(
        "prefer short answers", "give me long detailed answers"
    )
    assert judge("answer with numbered steps", "prefer short answers") is False


def test_the_conflict_judge_by_lane():
    engine = Engine(EngineConfig())
    assert isinstance(engine.conflict_check_for("campaign"), ScriptedConflictJudge)
    assert engine.conflict_check_for("live") is table_conflict
    table = Engine(load_config({"memory": {"conflict_judge": "table"}}))
    assert table.conflict_check_for("campaign") is table_conflict
