"""GET /metrics (Prometheus exposition, public like /health) and the middleware that counts
every HTTP request by route template, method and status, and every 429 by the limit that
refused it.

Both use the app's :class:`~helixflow.observability.metrics.Metrics` (``app.state.metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import fastapi.routing
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helixflow.errors import NotFoundError
from helixflow.observability.metrics import Metrics

_MAX_ERROR_BODY = 8 * 1024


def metrics_router(path: str = "/metrics") -> APIRouter:
    """The router serving the exposition at ``path`` (``observability.metrics_path``)."""
    router = APIRouter(tags=["health"])

    @router.get(
        path,
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def metrics(request: Request) -> Response:
        found: Metrics | None = getattr(request.app.state, "metrics", None)
        if found is None:
            raise NotFoundError("Metrics are disabled on this server.")
        body, content_type = found.render(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    return router


router = metrics_router()


class HTTPMetricsMiddleware:
    """Counts every HTTP request when its response has been sent (or has failed). Install it
    outermost, so that it sees the status the client got whoever answered."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._route_templates: RouteTemplates | None = None

    def _templates(self, scope: Scope) -> RouteTemplates:
        """Listed at the first request, when every router has been included (and again
        should routes be added later)."""
        routes: Sequence[Any] = getattr(scope.get("app"), "routes", ())
        if self._route_templates is None or self._route_templates.size != len(routes):
            self._route_templates = RouteTemplates(routes)
        return self._route_templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        refusal: list[bytes] | None = None

        async def watching_send(message: Message) -> None:
            nonlocal status, refusal
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 429:
                    refusal = []
            elif refusal is not None and sum(map(len, refusal)) < _MAX_ERROR_BODY:
                refusal.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            route = self._templates(scope).of(scope)
            self.metrics.observe_http(route, scope.get("method", ""), status)
            if refusal is not None:
                self.metrics.observe_rejection(*_code_and_message(b"".join(refusal)))


class RouteTemplates:
    """The path template of every route of an app, prefixes of included routers included.

    FastAPI leaves the route of the router it was declared in on ``scope["route"]`` (its path
    lacks the prefix it was included with), so the full templates are listed once, through
    ``fastapi.routing.iter_route_contexts``, and found by that route."""

    def __init__(self, routes: Sequence[Any]) -> None:
        self.size = len(routes)
        self._by_route: dict[int, str | None] = {}
        self._candidates: list[tuple[Any, str]] = []
        for context in _route_contexts(routes):
            path = getattr(context, "path", None)
            if not isinstance(path, str):
                continue
            key = id(getattr(context, "original_route", context))
            known = self._by_route.get(key, path)
            self._by_route[key] = path if known == path else None  # included twice: ambiguous
            self._candidates.append((context, path))

    def of(self, scope: Scope) -> str | None:
        """The template of the route that handled the request, or of the one it was meant for
        when a middleware answered before routing (401, 413); None when no route matches."""
        route = scope.get("route")
        if route is not None:
            template = self._by_route.get(id(route))
            if template is not None:
                return template
        for context, path in self._candidates:
            match, _ = context.matches(scope)
            if match is not Match.NONE:
                return path
        return None


_route_contexts: Callable[[Sequence[Any]], Iterable[Any]] = getattr(
    fastapi.routing, "iter_route_contexts", iter
)
"""FastAPI's routes with their effective paths (older FastAPI: ``app.routes`` hold them)."""


def _code_and_message(body: bytes) -> tuple[str | None, str | None]:
    """The ``code`` and ``message`` of an OpenAI error envelope (None where absent)."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
    )
