"""A chat request becomes a live turn: find the session, commit the user's message, put the
turn's first event on the live queues, and remember which turn the completion id names.

One request at a time per session: a Redis lock (shared by every gateway process) covers
finding the session and committing the message, and a turn starts only once the previous
turn of its session is answered (or, after ``turn_wait_s``, is answered empty). So a client
that went away mid-stream leaves its turn to finish in the workers, and its next request
simply follows it.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import msgspec
from redis.exceptions import LockError

from gateway.errors import APIError
from gateway.sessions import lock_key, resolve_session
from gateway.state import Gateway
from queues.events import StageTask
from vars_core.live import begin_turn, first_step, last_turn, seed_history
from vars_core.types import LiveOptions, Message, SessionState, Stage
from workers.publish import publish

POLL_S = 0.02


class TurnRef(msgspec.Struct, frozen=True):
    """What a completion id names: the turn, its user, and the key that asked."""

    user_id: str
    session_id: str
    turn: int
    key_id: str


def completion_key(gw: Gateway, completion_id: str) -> str:
    return f"{gw.settings.namespace}:gw:completion:{completion_id}"


async def remember(gw: Gateway, completion_id: str, ref: TurnRef) -> None:
    await gw.aredis.set(completion_key(gw, completion_id), msgspec.msgpack.encode(ref), ex=gw.settings.completion_ttl_s)


async def recall(gw: Gateway, completion_id: str) -> TurnRef | None:
    data = await gw.aredis.get(completion_key(gw, completion_id))
    return None if data is None else msgspec.msgpack.decode(cast(bytes, data), type=TurnRef)


async def start_turn(
    gw: Gateway,
    user_id: str,
    session_name: str | None,
    method: str,
    text: str,
    history: list[Message],
    options: LiveOptions,
) -> tuple[SessionState, int]:
    wait_s = gw.settings.turn_wait_s
    lock = gw.aredis.lock(lock_key(gw.store, user_id, session_name), timeout=wait_s + 30, blocking_timeout=wait_s + 5)
    if not await lock.acquire():
        raise APIError(409, "the session is busy with another request", "invalid_request_error", None, "session_busy")
    try:
        session = await asyncio.to_thread(
            resolve_session,
            gw.engine,
            gw.store,
            user_id,
            session_name,
            method,
            text,
            gw.settings.idle_timeout_s,
            time.time(),
        )
        await _previous_answered(gw, session, wait_s)
        turn = await asyncio.to_thread(_begin, gw, session, text, history, options)
    finally:
        try:
            await lock.release()
        except LockError:  # expired meanwhile: nothing left to release
            pass
    return session, turn


async def _previous_answered(gw: Gateway, session: SessionState, wait_s: float) -> None:
    last = await asyncio.to_thread(last_turn, gw.store, session)
    if last == 0:
        return
    marker = gw.store.keys.marker(session.session_id, last, "generate")
    deadline = time.monotonic() + wait_s
    while not await gw.aredis.exists(marker) and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)


def _begin(gw: Gateway, session: SessionState, text: str, history: list[Message], options: LiveOptions) -> int:
    seed_history(gw.store, session, history)
    turn = begin_turn(gw.engine, gw.store, session, text, options)
    step = first_step(session, turn)
    publish(gw.celery, StageTask(session.session_id, step.turn, cast(Stage, step.stage), "live"))
    return turn
