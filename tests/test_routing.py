"""The router: which stage follows which, per method and turn."""

from __future__ import annotations

import pytest

from vars_core.methods import METHODS, get_method
from vars_core.routing import END, Step, next_step


def _route(method: str, terminate_at: int) -> list[Step]:
    m = get_method(method)
    step, steps = Step("simulate", 1), []
    while step.stage != END:
        steps.append(step)
        step = next_step(m, step.stage, step.turn, terminated=step.turn == terminate_at)
    return steps


def test_rag_vector_runs_all_six_stages_after_the_first_turn():
    steps = _route("rag_vector", terminate_at=3)
    assert [s.stage for s in steps if s.turn == 1] == ["simulate", "extract", "retrieve", "generate"]
    assert [s.stage for s in steps if s.turn == 2] == [
        "simulate", "judge", "update", "extract", "retrieve", "generate"
    ]
    # The terminating turn still learns from the user's last reaction, then ends.
    assert [s.stage for s in steps if s.turn == 3] == ["simulate", "judge", "update"]


@pytest.mark.parametrize("method", ["vanilla", "all_memory", "rag"])
def test_methods_without_learning_end_at_the_terminating_simulate(method):
    steps = _route(method, terminate_at=2)
    assert steps[-1] == Step("simulate", 2)
    assert not {"judge", "update"} & {s.stage for s in steps}
    assert ("retrieve" in {s.stage for s in steps}) == (METHODS[method].memory == "retrieved")


def test_vanilla_is_simulate_then_generate():
    assert [s.stage for s in _route("vanilla", terminate_at=2)] == ["simulate", "generate", "simulate"]


def test_a_stage_off_the_route_is_an_error():
    with pytest.raises(ValueError, match="not on method 'vanilla'"):
        next_step(get_method("vanilla"), "retrieve", 2, terminated=False)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown method 'rag2'.*rag_vector"):
        get_method("rag2")
