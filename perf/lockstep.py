"""The lockstep runner of the reference experiments, as a comparison mode over the same
stage functions.

A batch of B sessions (session i of B lanes) advances turn by turn. ``barrier="stage"``
(the reference design): every session of the batch runs turn t's simulate, then every
session runs its judge, and so on through generate, each step sent for all sessions at
once and finished when the slowest returns; then turn t + 1. ``barrier="turn"``: each
session runs its whole turn on its own, and the batch waits for the slowest session's turn
before the next. Either way a session that ends early leaves its place idle until the
batch ends, and the lane's next session starts with the next batch.

It runs ``vars_core.stages.run_stage`` in this process on an in-memory store (no queues,
no Redis: cheaper per step than the pipeline), with one thread per session of the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from vars_core.engine import Engine
from vars_core.routing import END, Step
from vars_core.runner import new_session, register_profile
from vars_core.stages import run_stage, start_session
from vars_core.store import StateStore
from vars_core.types import Problem, Profile, SessionRecord

Barrier = Literal["stage", "turn"]
# The order a turn's steps run in (END closes a session after its last turn's steps).
STAGE_ORDER = ("simulate", "judge", "update", "extract", "retrieve", "generate", END)


def _rank(step: Step) -> tuple[int, int]:
    return step.turn, STAGE_ORDER.index(step.stage)


def run_batch(
    engine: Engine,
    store: StateStore,
    session_ids: list[str],
    pool: ThreadPoolExecutor,
    barrier: Barrier,
    on_end: Callable[[str], None] | None = None,
) -> None:
    """Run the (already started) sessions to their ends in lockstep; ``on_end(session_id)``
    as each one's last step completes."""
    steps: dict[str, Step] = {sid: Step("simulate", 1) for sid in session_ids}

    def advance(sid: str, step: Step) -> Step | None:
        return run_stage(engine, store, sid, step.turn, step.stage)

    def whole_turn(sid: str, step: Step) -> Step | None:
        turn = step.turn
        current: Step | None = step
        while current is not None and current.turn == turn:
            current = advance(sid, current)
        return current

    while steps:
        if barrier == "stage":
            head = min(steps.values(), key=_rank)
            due = [sid for sid, step in steps.items() if step == head]
            run: Callable[[str, Step], Step | None] = advance
        else:
            turn = min(step.turn for step in steps.values())
            due = [sid for sid, step in steps.items() if step.turn == turn]
            run = whole_turn
        results = list(pool.map(run, due, [steps[sid] for sid in due]))  # the barrier
        for sid, following in zip(due, results, strict=True):
            if following is None:
                del steps[sid]
                if on_end is not None:
                    on_end(sid)
            else:
                steps[sid] = following


def run_lockstep(
    engine: Engine,
    store: StateStore,
    campaign_id: str,
    lanes: list[tuple[Profile, str]],
    sessions: int,
    problems: list[Problem],
    seed: int,
    max_turns: int,
    batch: int,
    barrier: Barrier = "stage",
    on_end: Callable[[str], None] | None = None,
) -> list[SessionRecord]:
    """Every session of ``lanes`` (profile, method), ``batch`` lanes at a time: session 1 of
    the first ``batch`` lanes in lockstep, then their session 2, ..., then the next lanes.
    ``on_end(session_id)`` is called as each session ends."""
    records: list[SessionRecord] = []
    with ThreadPoolExecutor(max_workers=batch, thread_name_prefix="lockstep") as pool:
        for first in range(0, len(lanes), batch):
            group = lanes[first : first + batch]
            for profile, _ in group:
                register_profile(store, campaign_id, profile)
            for index in range(1, sessions + 1):
                states = [
                    new_session(campaign_id, profile, method, index, problems, seed, max_turns)
                    for profile, method in group
                ]
                started = list(pool.map(lambda s: start_session(engine, store, s), states))
                run_batch(engine, store, [s.session_id for s in started], pool, barrier, on_end)
                for state in started:
                    record = store.session_record(state.session_id)
                    assert record is not None, "a finished session always has a record"
                    records.append(record)
    return records
