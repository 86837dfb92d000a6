"""simulate: the simulated user reads the agent's last reply and says its next message.

Turn 1 is the opening decided at session start (the same for both kinds of simulated
user); from turn 2 on the engine's simulator speaks: the scripted rule or the LLM user,
as configured (``EngineConfig.simulator``).
"""

from __future__ import annotations

from vars_core.stages.context import StageContext
from vars_core.types import Message, SimulatorTurn


def handle(ctx: StageContext) -> None:
    session = ctx.session
    if ctx.turn == 1:
        result = SimulatorTurn(message=session.opening, terminate=False, conflict_probe=session.conflict_probe)
    else:
        result = ctx.engine.simulator(
            ctx.profile,
            session.problem,
            session.opening,
            ctx.messages(),
            ctx.turn,
            session.max_turns,
            ctx.rng("simulate"),
        )
    ops = [ctx.output_op("simulate", result)]
    if result.message:
        ops.append(ctx.store.append_message_op(session.session_id, Message("user", result.message, ctx.turn)))
    ctx.commit("simulate", ops)
