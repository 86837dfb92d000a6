"""Which live session a request belongs to.

A client may name its session (``X-Session-Id``): the name maps to a server session under
the user's keys and lasts until it is reset. Without a name the user has one default
session, which ends after ``idle_timeout_s`` without a turn; the next request starts a new
one (z_short back to zero, z_long kept). A request for another method than its session's
also starts a new session. These functions are synchronous store code: the gateway runs
them in a thread, and tests run them on the in-memory backend.
"""

from __future__ import annotations

import re

from vars_core.engine import Engine
from vars_core.live import current_session, start_live_session
from vars_core.stages.context import StageContext
from vars_core.stages.lifecycle import START_TURN, end_session
from vars_core.store import StateStore
from vars_core.store.backend import Op
from vars_core.types import SessionState

SESSION_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
NAMED = "live-session:"


def check_session_name(name: str) -> str:
    if not SESSION_NAME.match(name):
        raise ValueError(f"invalid X-Session-Id {name!r}: 1-128 of letters, digits and . _ : -")
    return name


def pointer_key(store: StateStore, user_id: str, name: str | None) -> str:
    """Where the user's session of that name (None: the default one) is recorded."""
    if name is None:
        return store.user(user_id).live_session_key
    return store.keys.user(user_id, NAMED + check_session_name(name))


def lock_key(store: StateStore, user_id: str, name: str | None) -> str:
    """The lock that lets one request at a time start a turn in that session."""
    return store.keys.user(user_id, "session-lock:" + (name or ""))


def is_idle(last_activity: float | None, now: float, idle_timeout_s: float) -> bool:
    """Has a session whose last commit was at ``last_activity`` gone idle by ``now``?"""
    if idle_timeout_s <= 0 or last_activity is None:
        return False
    return now - last_activity > idle_timeout_s


def end_live_session(engine: Engine, store: StateStore, session: SessionState) -> None:
    end_session(StageContext(engine, store, session, START_TURN))


def resolve_session(
    engine: Engine,
    store: StateStore,
    user_id: str,
    name: str | None,
    method: str,
    opening: str,
    idle_timeout_s: float,
    now: float,
) -> SessionState:
    """The session this request's turn goes to: the current one, or a new one when there
    is none, it went idle (default session only) or it runs another method."""
    pointer = pointer_key(store, user_id, name)
    session = current_session(store, store.user(user_id), pointer)
    if session is not None:
        idle = name is None and is_idle(store.last_progress(session.session_id), now, idle_timeout_s)
        if session.method == method and not idle:
            return session
        end_live_session(engine, store, session)
    return start_live_session(engine, store, user_id, method, opening, pointer)


def reset_sessions(engine: Engine, store: StateStore, user_id: str, name: str | None = None) -> int:
    """End the user's live sessions (only the named one, when a name is given) and zero
    z_short; z_long and memory stay. Returns how many sessions were open."""
    user = store.user(user_id)
    if name is not None:
        pointers = [pointer_key(store, user_id, name)]
    else:
        pointers = [user.live_session_key, *store.backend.scan(store.keys.user(user_id, NAMED))]
    ended = 0
    for pointer in pointers:
        session = current_session(store, user, pointer)
        if session is not None:
            end_live_session(engine, store, session)
            ended += 1

    def build() -> tuple[list[Op], None]:
        return [*(Op("del", p) for p in pointers), *user.zero_short_ops()], None

    store.backend.transact([user.vector_key], build)
    return ended
