"""perf.lockstep and perf.capacity_engine: the lockstep runner plays the same sessions as
the in-process runner, and the paced engine makes each role's call where the real role
makes it (one agent, extractor and simulated-user call per agent turn, one judge call per
reaction), against a capacity server that spends no time (time_scale 0)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import msgspec
import pytest

from perf.capacity_engine import PacedEngine, paced_config
from perf.capacity_server import Capacity, CapacityServer
from perf.lockstep import run_lockstep
from vars_core.config import load_config
from vars_core.problems import load_problems
from vars_core.runner import run_lane
from vars_core.scripted.profiles import generate_profiles
from vars_core.store import StateStore

SEED, MAX_TURNS, SESSIONS = 7, 9, 2


@pytest.fixture(scope="module")
def server() -> Iterator[CapacityServer]:
    srv = CapacityServer(Capacity(time_scale=0.0))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def engine(server: CapacityServer) -> Iterator[PacedEngine]:
    built = PacedEngine(load_config(paced_config(server.url, max_concurrency=8)))
    yield built
    built.agent_llm.close()


def reset(server: CapacityServer) -> None:
    httpx.post(server.url + "/stats/reset").raise_for_status()


def calls(server: CapacityServer) -> Counter[str]:
    return Counter(r[0] for r in httpx.get(server.url + "/stats").json()["requests"])


@pytest.mark.parametrize("barrier", ["stage", "turn"])
def test_lockstep_plays_the_runners_sessions(server: CapacityServer, engine: PacedEngine, barrier: str) -> None:
    problems = load_problems(["math-500", "logiqa", "mmlu"])
    people = generate_profiles(3, SEED)
    reset(server)
    expected = []
    for person in people:
        expected += run_lane(engine, StateStore(), "c", person, "rag_vector", SESSIONS, problems, SEED, MAX_TURNS)
    by_role = calls(server)
    turns = sum(r.turns for r in expected)
    timeouts = sum(r.timeout for r in expected)
    assert by_role == {"agent": turns, "extractor": turns, "simulator": turns, "judge": turns - timeouts}

    reset(server)
    got = run_lockstep(
        engine, StateStore(), "c", [(p, "rag_vector") for p in people], SESSIONS, problems, SEED, MAX_TURNS,
        batch=3, barrier=barrier,  # type: ignore[arg-type]
    )
    assert sorted(msgspec.json.encode(r) for r in got) == sorted(msgspec.json.encode(r) for r in expected)
    assert calls(server) == by_role
    # Sessions of a lane run in order: session 2 of every lane after session 1 of all.
    assert [r.session_index for r in got] == [1, 1, 1, 2, 2, 2]
