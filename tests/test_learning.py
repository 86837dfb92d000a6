"""The user vector learns a hidden order between two cards, in the engine alone, when its
lists are sampled; the greedy off-policy update cannot see an order inside the list."""

from __future__ import annotations

import numpy as np
import pytest

from perf.learning_curve import (
    END,
    START,
    build_world,
    first_of,
    learning_curve,
    render,
    run_lane,
    step_sweep,
    write_section,
)
from vars_core.config import PolicyConfig, ReinforceConfig
from vars_core.projection import random_projection
from vars_core.retrieval import dense_candidates

SEEDS = range(5)


@pytest.fixture(scope="module")
def world():
    return build_world()


SAMPLED = PolicyConfig(epsilon=1.0, kappa=3.0)
STEPS = ReinforceConfig(eta_long=0.005, eta_short=0.01)


@pytest.fixture(scope="module")
def curve(world):
    return learning_curve(world, seeds=SEEDS, updates=200, every=20, reinforce=STEPS, policy=SAMPLED)


def test_every_query_reaches_its_pair(world):
    # the world is only a fair test if a query's own pair is in the dense top candidates
    for pair, query in world.queries:
        ids, _ = dense_candidates(world.index, query, 5)
        assert set(world.pair_cards[pair]) & set(ids[:3])


def test_sampled_rag_vector_beats_rag_after_200_updates(curve):
    rag, learned = curve["rag"], curve["rag_vector"]
    assert len(rag) == len(learned) == 11
    assert len(set(rag)) == 1  # rag never updates
    assert learned[0] == rag[0]  # both start from z = 0
    assert learned[-1] >= rag[-1] + 0.10, (rag, learned)


def test_the_greedy_update_is_blind_to_order_inside_the_list(world, curve):
    """The reward here is only about which of two listed cards comes first; the greedy
    surrogate raises or lowers the listed cards together, so it learns (almost) nothing."""
    greedy = learning_curve(world, seeds=SEEDS, updates=200, every=200, reinforce=STEPS)
    assert greedy["rag_vector"][-1] < curve["rag_vector"][-1] - 0.08


def test_without_steps_nothing_is_learned(world):
    # control: the same loop with zero step sizes must not beat rag
    frozen = ReinforceConfig(eta_long=0.0, eta_short=0.0)
    for seed in SEEDS[:2]:
        assert run_lane(world, "rag_vector", seed, 40, 40, frozen) == run_lane(
            world, "rag", seed, 40, 40
        )


def test_first_of():
    assert first_of(["x", "a", "b"], "a", "b")
    assert not first_of(["b", "a"], "a", "b")
    assert not first_of(["x"], "a", "b")


def test_report_section_is_rendered_and_replaced(world, curve, tmp_path):
    sweep = step_sweep(world, grid=[("greedy", 0.001, 0.002)], seeds=[0], holdout=[1], updates=20)
    section = render(world, curve, 20, sweep, (curve["rag"][0], curve["rag"][0]))
    assert "| 200 |" in section and "| greedy | 0.001 | 0.002 |" in section
    path = tmp_path / "results.md"
    path.write_text("# Results\n\nkept above\n")
    write_section(path, section)
    write_section(path, section.replace("0.001", "0.0010"))  # regenerating replaces, not appends
    text = path.read_text()
    assert text.count(START) == 1 == text.count(END)
    assert "kept above" in text and "| greedy | 0.0010 |" in text


def test_unknown_method_is_rejected(world):
    with pytest.raises(ValueError):
        run_lane(world, "vanilla", 0)


def test_world_items_are_projected_notes(world):
    item = np.asarray(world.embeddings["p0a"].item)
    note = np.asarray(world.embeddings["p0a"].note)
    np.testing.assert_allclose(item, random_projection().project(note), atol=1e-6)
