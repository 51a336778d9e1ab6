"""The admin API under test: an app around one router, a client over ASGI, envelope checks;
the keys and users API acting as a chosen principal (its fixtures are in ``conftest.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from helixflow.api.admin.analytics import get_now
from helixflow.api.admin.keys import router as keys_router
from helixflow.api.admin.users import router as users_router
from helixflow.api.auth import PRINCIPAL_KEY
from helixflow.api.errors import install_error_handlers
from helixflow.security.accounts import CLI_ACTOR, AccountService
from helixflow.security.identity import Principal, Role, UserRecord
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


# --------------------------------------------------------------------------- keys and users

KEYS = "/api/v1/keys"
PASSWORD = "correct horse battery"


@dataclass
class Acting:
    """Who the next requests act as (None: no principal, i.e. authentication off)."""

    principal: Principal | None = None


class ActAs:
    """Test-only ASGI middleware: puts the chosen principal where the auth middleware would."""

    def __init__(self, app: ASGIApp, acting: Acting) -> None:
        self.app = app
        self.acting = acting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.acting.principal is not None:
            scope.setdefault("state", {})[PRINCIPAL_KEY] = self.acting.principal
        await self.app(scope, receive, send)


def accounts_app(accounts: AccountService | None, acting: Acting) -> FastAPI:
    """The keys and users routers with the error handlers, ``accounts`` on the state (None:
    no account service), requests acting as ``acting.principal``."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(keys_router)
    app.include_router(users_router)
    if accounts is not None:
        app.state.accounts = accounts
    app.add_middleware(ActAs, acting=acting)
    return app


def user_principal(user: UserRecord) -> Principal:
    return Principal(kind="user", role=user.role, name=user.username, user_id=user.id)


async def add_user(accounts: AccountService, name: str, role: Role) -> UserRecord:
    return await accounts.create_user(name, PASSWORD, role, CLI_ACTOR)


def error(response: httpx.Response) -> dict[str, Any]:
    """The error envelope's inner object, after checking the envelope's shape."""
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    inner: dict[str, Any] = body["error"]
    return inner
