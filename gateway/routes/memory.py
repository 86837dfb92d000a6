"""A user's memory and sessions:

- GET /v1/users/{user}/memory: the user's active cards; ``?include=superseded`` adds the
  cards a later preference replaced (with what replaced them) and those the cap evicted;
- DELETE /v1/users/{user}/memory/{card_id}: one card, with its vectors and the traces
  that hold it (and the older versions it superseded);
- DELETE /v1/users/{user}/memory: everything (``reset_user``: cards, vectors, baseline,
  traces, sessions);
- POST /v1/users/{user}/sessions/reset: end the user's live sessions (only the one named
  by X-Session-Id, if sent); memory and z_long stay.

The key must be bound to the user (403 otherwise); the store enforces the partition below.
"""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import bad_request, not_found
from gateway.protocol import MemoryCard, MemoryDeleted, MemoryList, SessionsReset
from gateway.routes.chat import session_name
from gateway.sessions import reset_sessions
from gateway.state import Gateway
from vars_core.memory import EVICTED
from vars_core.personalized import PersonalizedLLM
from vars_core.types import Card


def _json(body: object) -> Response:
    return Response(msgspec.json.encode(body), media_type="application/json")


async def _user(request: Request) -> tuple[Gateway, str, str]:
    gw: Gateway = request.app.state.gateway
    key = await gw.authenticate(request)
    user = request.path_params["user"]
    return gw, user, gw.user_for(key, user)


async def list_memory(request: Request) -> Response:
    gw, user, user_id = await _user(request)
    include = request.query_params.get("include", "")
    if include not in ("", "superseded"):
        raise bad_request(f"unknown include {include!r}: the one value is 'superseded'", "include")
    everything = include == "superseded" or request.query_params.get("include_superseded", "").lower() in ("1", "true", "yes")
    cards = await asyncio.to_thread(PersonalizedLLM(gw.engine, gw.store).memory, user_id, everything)
    notes = {c.card_id: c.note for c in cards}
    return _json(MemoryList(user, [_memory_card(c, notes) for c in cards]))


def _memory_card(card: Card, notes: dict[str, str]) -> MemoryCard:
    replaced = card.superseded_by
    status = "active" if replaced is None else "evicted" if replaced == EVICTED else "superseded"
    return MemoryCard(
        card.card_id,
        card.note,
        card.condition,
        card.action,
        card.created_at,
        card.confidence,
        status=status,
        superseded_by=replaced,
        superseded_by_note=notes.get(replaced) if status == "superseded" else None,
    )


async def delete_card(request: Request) -> Response:
    gw, user, user_id = await _user(request)
    card_id = request.path_params["card_id"]
    deleted = await asyncio.to_thread(gw.store.user(user_id).forget_card, card_id)
    if not deleted:
        raise not_found(f"user {user!r} has no memory card {card_id!r}", "card_id")
    return _json(MemoryDeleted(user, deleted))


async def delete_memory(request: Request) -> Response:
    gw, user, user_id = await _user(request)

    def reset() -> list[str]:
        ids = sorted(gw.store.user(user_id).cards(include_superseded=True))
        PersonalizedLLM(gw.engine, gw.store).reset_user(user_id)
        return ids

    return _json(MemoryDeleted(user, await asyncio.to_thread(reset), reset=True))


async def reset_user_sessions(request: Request) -> Response:
    gw, user, user_id = await _user(request)
    ended = await asyncio.to_thread(reset_sessions, gw.engine, gw.store, user_id, session_name(request))
    return _json(SessionsReset(user, ended))
