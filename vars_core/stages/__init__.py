"""Stage handlers: load state -> call the vars_core function -> commit, idempotently.

``run_stage`` is the one entry point for the in-process runner and the queued workers
alike: a stage already committed is not run again (no side effects twice), and the next
step is derived from committed outputs, so a duplicate delivery publishes the same next
event as the first.
"""

from __future__ import annotations

from collections.abc import Callable

from vars_core.engine import Engine
from vars_core.routing import END, Step, next_step, turn_stages
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


class StrayEvent(ValueError):
    """An event for a stage that is not on its session's route (a bug or a forged message).
    Retrying cannot help; it is refused without touching the session."""


def run_stage(engine: Engine, store: StateStore, session_id: str, turn: int, stage: str) -> Step | None:
    """Run one stage of one session turn (or the session end); return the next step,
    or None when the session is over (or, live, when the turn is answered)."""
    session = store.session(session_id)
    ctx = StageContext(engine, store, session, turn)
    if stage == END:
        end_session(ctx)
        return None
    if stage not in HANDLERS:
        raise StrayEvent(f"unknown stage {stage!r}")
    if store.is_committed(session_id, START_TURN, "end"):
        return None  # a late duplicate of a finished session: nothing to do, nothing to publish
    if not store.is_committed(session_id, turn, stage):
        _check_on_route(ctx, stage)
        HANDLERS[stage](ctx)
    if stage == "generate" and session.lane == "live":
        return None  # a live turn ends with its reply; the user's next message starts the next
    sim = ctx.simulator_turn()
    return next_step(ctx.method, stage, turn, terminated=bool(sim and sim.terminate))


def _check_on_route(ctx: StageContext, stage: str) -> None:
    sid, turn = ctx.session.session_id, ctx.turn
    if stage == "simulate":
        ready = turn == 1 or ctx.store.is_committed(sid, turn - 1, "generate")
    else:
        sim = ctx.simulator_turn()
        ready = sim is not None and stage in turn_stages(ctx.method, turn, sim.terminate)
    if not ready:
        raise StrayEvent(f"{stage} at turn {turn} is not on the route of session {sid!r}")


__all__ = ["END", "HANDLERS", "START_TURN", "Step", "StrayEvent", "run_stage", "start_session"]
