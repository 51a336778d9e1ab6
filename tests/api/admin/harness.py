"""The admin API under test: an app around one router, a client over ASGI, envelope checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
from fastapi import APIRouter, FastAPI

from helixflow.api.admin.analytics import get_now
from helixflow.api.errors import install_error_handlers
from helixflow.store.database import Database

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
"""What ``now`` is in the apps built here: the end of every ``window``."""

BAD_RANGES: list[tuple[dict[str, str], str]] = [
    ({"window": "banana"}, "window"),
    ({"window": "91d"}, "window"),
    ({"window": "1h", "since": "2024-05-01T00:00:00Z"}, "window"),
    ({"since": "yesterday"}, "since"),
    ({"until": "2024-02-30T00:00:00Z"}, "until"),
    ({"since": "2024-05-01T11:00:00Z", "until": "2024-05-01T10:00:00Z"}, "since"),
]
"""Time ranges every ranged endpoint refuses, with the parameter the refusal names."""


def admin_app(router: APIRouter, database: Database | None = None) -> FastAPI:
    """An app serving ``router`` with the error handlers, ``database`` on its state (None: no
    database) and ``now`` pinned to :data:`NOW`."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.database = database
    app.dependency_overrides[get_now] = lambda: NOW
    return app


@asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client calling ``app`` in process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def assert_400(response: httpx.Response, param: str) -> None:
    """An ``invalid_request_error`` envelope naming ``param``."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


async def assert_needs_a_database(router: APIRouter, url: str) -> None:
    """Without a database, ``GET url`` is a 503."""
    async with asgi_client(admin_app(router)) as http:
        response = await http.get(url)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
