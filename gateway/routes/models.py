"""GET /v1/models: one model per personalization method (``vars-<method>``), and ``vars``
for the configured default."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.protocol import Model, ModelList
from gateway.routes.chat import model_names
from gateway.state import Gateway


async def list_models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    await gw.authenticate(request)
    body = ModelList([Model(name) for name in model_names()])
    return Response(msgspec.json.encode(body), media_type="application/json")
