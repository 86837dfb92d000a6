"""GET /healthz (no key: for load balancers) and GET /metrics (Prometheus text format)."""

from __future__ import annotations

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from gateway.protocol import Health
from gateway.state import Gateway


async def healthz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    try:
        redis_ok = bool(await gw.aredis.ping())
    except Exception:
        redis_ok = False
    body = Health("ok" if redis_ok else "degraded", redis_ok)
    return Response(msgspec.json.encode(body), status_code=200 if redis_ok else 503, media_type="application/json")


async def metrics(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
