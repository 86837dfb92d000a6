"""Live sessions: a real user's turns through the same stage handlers as campaigns.

The user's message takes the simulate stage's place: it is committed as that turn's
simulator output, so the router, judge, update, extract and retrieve run unchanged.
Used by the library facade and the gateway alike.
"""

from __future__ import annotations

import secrets

import numpy as np

from vars_core.engine import Engine
from vars_core.methods import get_method
from vars_core.routing import Step, next_step
from vars_core.stages import START_TURN, run_stage
from vars_core.stages.context import StageContext
from vars_core.store import PartitionError, StateStore, UserScope
from vars_core.store.backend import Op
from vars_core.store.state import decode
from vars_core.tenant import tenant_mean, tenant_of
from vars_core.types import (
    AgentReply,
    GenerateResult,
    LiveOptions,
    Message,
    Problem,
    SessionState,
    SimulatorTurn,
    UserVector,
)

LIVE_PROBLEM = Problem(problem_id="", domain="live", question="", answer="")
LIVE_MAX_TURNS = 1_000_000


def current_session(store: StateStore, user: UserScope, pointer_key: str | None = None) -> SessionState | None:
    """The live session ``pointer_key`` names (default: the user's), unless it has ended."""
    data = store.backend.get(pointer_key or user.live_session_key)
    if not data:
        return None
    session = store.session(data.decode())
    return None if store.is_committed(session.session_id, START_TURN, "end") else session


def start_live_session(
    engine: Engine, store: StateStore, user_id: str, method: str, opening: str, pointer_key: str | None = None
) -> SessionState:
    """A new live session, pointed to by ``pointer_key`` (default: the user's own pointer;
    the gateway keeps one per client-named session, all under the user's keys)."""
    user = store.user(user_id)
    pointer = pointer_key or user.live_session_key
    if not pointer.startswith(user.prefix):
        raise PartitionError(f"session pointer {pointer!r} is not under user {user_id!r}'s keys")
    state = SessionState(
        session_id=f"live:{user_id}:{secrets.token_hex(6)}",
        user_id=user_id,
        method=method,
        profile_id="",
        session_index=0,
        problem=LIVE_PROBLEM,
        max_turns=LIVE_MAX_TURNS,
        seed=int.from_bytes(secrets.token_bytes(4), "little"),
        opening=opening,
        lane="live",
    )
    dim = engine.config.projection_dim

    def build() -> list[Op]:
        ops = [store.put_session_op(state), Op("set", pointer, value=state.session_id.encode())]
        fresh = None
        if user.stored_vector() is None and engine.config.cold_start == "tenant_mean":
            agg = tenant_mean(store, tenant_of(user_id))
            if agg.count:
                z_long = (np.asarray(agg.total) / agg.count).tolist()
                fresh = UserVector(z_long=z_long, z_short=[0.0] * dim)
        return ops + user.session_start_ops(state.session_id, fresh)

    store.transact_stage(state.session_id, START_TURN, "start", [user.vector_key], build)
    return state


def last_turn(store: StateStore, session: SessionState) -> int:
    """The session's latest turn: that of its last message (one read, however long)."""
    last = store.backend.lrange(store.keys.session(session.session_id, "messages"), -1, -1)
    return decode(last[0], Message).turn if last else 0


def seed_history(store: StateStore, session: SessionState, messages: list[Message]) -> bool:
    """A stateless client's view of the conversation, as the history of a session that has
    none yet (turn 0: before the first turn, so no stage runs on it). False if it had some."""
    key = store.keys.session(session.session_id, "messages")
    if not messages or store.backend.llen(key):
        return False
    ops = [store.append_message_op(session.session_id, Message(m.role, m.content, START_TURN)) for m in messages]
    # The marker makes the seeding happen once, however many requests race to do it.
    return store.backend.apply(ops, marker=store.keys.marker(session.session_id, START_TURN, "history"))


def begin_turn(
    engine: Engine, store: StateStore, session: SessionState, text: str, options: LiveOptions | None = None
) -> int:
    """Commit the user's message as the next turn; a previous turn left without a reply
    (its backend failed) gets an empty one, so the session is never stuck. ``options``:
    the request's own generation settings, read by the generate stage."""
    turn = last_turn(store, session) + 1
    if turn > 1 and not store.is_committed(session.session_id, turn - 1, "generate"):
        ctx = StageContext(engine, store, session, turn - 1)
        ctx.commit("generate", [ctx.output_op("generate", GenerateResult(reply=AgentReply(content="")))])
    ctx = StageContext(engine, store, session, turn)
    ops = [
        ctx.output_op("simulate", SimulatorTurn(message=text, terminate=False)),
        store.append_message_op(session.session_id, Message("user", text, turn)),
    ]
    if options is not None:
        ops.append(ctx.output_op("options", options))
    ctx.commit("simulate", ops)
    return turn


def first_step(session: SessionState, turn: int) -> Step:
    """The stage after the user's message: where the queued pipeline picks the turn up."""
    return next_step(get_method(session.method), "simulate", turn, terminated=False)


def run_until_generate(engine: Engine, store: StateStore, session: SessionState, turn: int) -> None:
    """judge -> update -> extract -> retrieve, as the session's method routes them."""
    step: Step | None = run_stage(engine, store, session.session_id, turn, "simulate")
    while step is not None and step.stage != "generate":
        step = run_stage(engine, store, session.session_id, step.turn, step.stage)
