"""POST /v1/feedback: an explicit reward in [-1, 1], or a judge label, for one completion.

It goes through the normal update path: one REINFORCE step on the user's vector with the
retrieval trace of that completion's turn, applied at most once per completion."""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import bad_request, forbidden, from_validation, not_found
from gateway.protocol import FeedbackRequest, FeedbackResult
from gateway.state import Gateway
from gateway.turns import recall
from vars_core.personalized import Feedback, PersonalizedLLM

_decoder = msgspec.json.Decoder(FeedbackRequest)


async def give_feedback(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    key = await gw.authenticate(request)
    body = await gw.read_body(request, key)
    try:
        req = _decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise from_validation(exc) from None
    if (req.reward is None) == (req.label is None):
        raise bad_request("give exactly one of `reward` (in [-1, 1]) or `label`", "reward")
    ref = await recall(gw, req.completion_id)
    if ref is None:
        raise not_found(f"unknown or expired completion id {req.completion_id!r}", "completion_id")
    tenant, _, user = ref.user_id.partition("/")
    if tenant != key.tenant or not key.may_act_for(user):
        raise forbidden("this API key may not give feedback for that completion's user", "completion_id")
    feedback = Feedback(
        user_id=ref.user_id,
        reward=req.reward or 0.0,
        confidence=req.confidence,
        session_id=ref.session_id,
        turn=ref.turn,
        label=req.label,
    )
    result = await asyncio.to_thread(PersonalizedLLM(gw.engine, gw.store).apply_feedback, feedback)
    out = FeedbackResult(req.completion_id, result.applied, result.reason, result.advantage)
    return Response(msgspec.json.encode(out), media_type="application/json")
