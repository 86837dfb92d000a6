"""Stage handlers: load state -> call the vars_core function -> commit, idempotently.

``run_stage`` is the one entry point for the in-process runner and the queued workers
alike: a stage already committed is not run again (no side effects twice), and the next
step is derived from committed outputs, so a duplicate delivery publishes the same next
event as the first.
"""

from __future__ import annotations

from collections.abc import Callable

from vars_core.engine import Engine
from vars_core.routing import END, Step, next_step
from vars_core.stages import extract, generate, judge, retrieve, simulate, update
from vars_core.stages.context import StageContext
from vars_core.stages.lifecycle import START_TURN, end_session, start_session
from vars_core.store import StateStore

HANDLERS: dict[str, Callable[[StageContext], None]] = {
    "simulate": simulate.handle,
    "judge": judge.handle,
    "update": update.handle,
    "extract": extract.handle,
    "retrieve": retrieve.handle,
    "generate": generate.handle,
}


def run_stage(engine: Engine, store: StateStore, session_id: str, turn: int, stage: str) -> Step | None:
    """Run one stage of one session turn (or the session end); return the next step."""
    session = store.session(session_id)
    ctx = StageContext(engine, store, session, turn)
    if stage == END:
        end_session(ctx)
        return None
    try:
        handler = HANDLERS[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}") from None
    if not store.is_committed(session_id, turn, stage):
        handler(ctx)
    sim = ctx.simulator_turn()
    return next_step(ctx.method, stage, turn, terminated=bool(sim and sim.terminate))


__all__ = ["END", "HANDLERS", "START_TURN", "Step", "run_stage", "start_session"]
