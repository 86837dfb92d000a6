"""The ASGI app: routes, OpenAI-shaped errors for every failure, and request metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError
from gateway.metrics import REQUESTS
from gateway.routes import chat, feedback, health, memory, models
from gateway.settings import GatewaySettings
from gateway.state import Gateway

log = logging.getLogger("vars.gateway")

# Store calls run in threads; a wait on a slow turn must not starve the others.
THREADS = 64

ROUTES = [
    Route("/v1/chat/completions", chat.create_chat_completion, methods=["POST"]),
    Route("/v1/models", models.list_models, methods=["GET"]),
    Route("/v1/feedback", feedback.give_feedback, methods=["POST"]),
    Route("/v1/users/{user}/memory", memory.list_memory, methods=["GET"]),
    Route("/v1/users/{user}/memory", memory.delete_memory, methods=["DELETE"]),
    Route("/v1/users/{user}/memory/{card_id}", memory.delete_card, methods=["DELETE"]),
    Route("/v1/users/{user}/sessions/reset", memory.reset_user_sessions, methods=["POST"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "api_error")
    return APIError(exc.status_code, str(exc.detail), kind).response()


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}", "server_error").response()


class RequestMetrics:
    """Counts answered requests by route template (not raw path: user ids would explode
    the label set) and status."""

    def __init__(self, app: ASGIApp, routes: list[Route]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = next((r.path for r in self.routes if r.matches(scope)[0] == Match.FULL), "other")
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            REQUESTS.labels(route, str(status)).inc()


def build_app(redis_url: str, settings: GatewaySettings | None = None, gateway: Gateway | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(THREADS, "gateway"))
        gw = gateway or Gateway(redis_url, settings)
        app.state.gateway = gw
        try:
            yield
        finally:
            await gw.close()

    app = Starlette(
        routes=ROUTES,
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.add_middleware(RequestMetrics, routes=ROUTES)
    return app
