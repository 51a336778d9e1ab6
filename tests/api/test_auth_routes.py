"""Login, refresh, logout and the JWKS over ASGI, with a real TokenService, audit log and
database (SQLite and PostgreSQL) and a stand-in account service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from helixflow.api.auth_routes import LoginThrottle, router
from helixflow.api.errors import install_error_handlers
from helixflow.errors import AuthenticationError, RateLimitError
from helixflow.security.identity import UserRecord
from helixflow.security.tokens import TokenService
from helixflow.security_config import SecurityConfig
from helixflow.store.database import Database
from helixflow.store.repositories.audit import AuditRepository
from tests.security.factories import FakeClock, WallClock, store_users

SECRET = b"route-test-secret-0123456789abcdef"
TTL = 600
REFRESH_TTL = 7200
LIMIT = 3
CONFIG = SecurityConfig(
    access_token_ttl_s=TTL,
    refresh_token_ttl_s=REFRESH_TTL,
    login_attempts_per_minute=LIMIT,
)
ALICE = UserRecord(id="usr_alice", username="alice", role="admin")
BOB = UserRecord(id="usr_bob", username="bob", role="viewer")
PASSWORDS = {"alice": "correct horse battery", "bob": "hunter2 hunter2"}
BASE = "https://hf.test"
TICK0 = 1000.0
"""Where the login throttle's clock (monotonic seconds) starts."""


@dataclass
class Accounts:
    """Stands in for AccountService: authenticate, get_user, audit (the real one)."""

    audit: AuditRepository
    users: dict[str, UserRecord] = field(
        default_factory=lambda: {u.username: u for u in (ALICE, BOB)}
    )
    calls: list[tuple[str, str | None]] = field(default_factory=list)

    async def authenticate(
        self, username: str, password: str, *, request_id: str | None = None, ip: str | None = None
    ) -> UserRecord | None:
        self.calls.append((username, ip))
        user = self.users.get(username)
        if user is None or PASSWORDS.get(username) != password:
            return None
        return user

    async def get_user(self, user_id: str) -> UserRecord | None:
        return next((u for u in self.users.values() if u.id == user_id), None)


@dataclass
class Harness:
    app: FastAPI
    tokens: TokenService
    accounts: Accounts
    clock: WallClock
    ticks: FakeClock

    def client(self, address: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url=BASE)


def build(database: Database, config: SecurityConfig = CONFIG) -> Harness:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    accounts = Accounts(AuditRepository(database))
    clock, ticks = WallClock(), FakeClock(TICK0)
    tokens = TokenService(database, SECRET, config, users=accounts, clock=clock)
    app.state.accounts = accounts
    app.state.tokens = tokens
    app.state.login_throttle = LoginThrottle(config.login_attempts_per_minute, clock=ticks)
    return Harness(app, tokens, accounts, clock, ticks)


@pytest.fixture
async def harness(database: Database) -> AsyncIterator[Harness]:
    await store_users(database, ALICE, BOB)
    h = build(database)
    yield h
    await h.tokens.stop()


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    async with harness.client() as c:
        yield c


async def audit_entries(harness: Harness) -> list[dict[str, Any]]:
    """The audit log, oldest first: who did what to which user, the after image, from where."""
    records = await harness.accounts.audit.list()
    return [
        {
            "actor": r.actor,
            "action": r.action,
            "target_id": r.target_id,
            "after": r.after,
            "ip": r.ip_address,
        }
        for r in reversed(records)
    ]


async def login(
    client: httpx.AsyncClient, username: str = "alice", password: str | None = None
) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/login",
        json={"username": username, "password": password or PASSWORDS.get(username, "x")},
    )


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Each Set-Cookie header by cookie name, lower-cased for attribute checks."""
    out = {}
    for header in response.headers.get_list("set-cookie"):
        name = header.split("=", 1)[0]
        out[name] = header.lower()
    return out


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    inner: dict[str, Any] = body["error"]
    return inner


# --- login -----------------------------------------------------------------------------------


async def test_login(harness: Harness, client: httpx.AsyncClient) -> None:
    response = await login(client)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == TTL
    assert response.headers["cache-control"] == "no-store"
    claims = await harness.tokens.verify(body["access_token"])
    assert (claims.sub, claims.name, claims.role) == (ALICE.id, "alice", "admin")
    assert harness.accounts.calls == [("alice", "127.0.0.1")]
    # authenticate audits a success itself; the route adds nothing.
    assert await audit_entries(harness) == []


async def test_login_cookies(client: httpx.AsyncClient) -> None:
    response = await login(client)
    body = response.json()
    cookies = set_cookies(response)
    assert set(cookies) == {"helixflow_session", "helixflow_refresh", "helixflow_csrf"}

    session = cookies["helixflow_session"]
    assert session.startswith(f"helixflow_session={body['access_token'].lower()};")
    for attribute in ("httponly", "samesite=strict", "secure", "path=/;", f"max-age={TTL}"):
        assert attribute in session + ";", (attribute, session)

    refresh = cookies["helixflow_refresh"]
    assert refresh.startswith(f"helixflow_refresh={body['refresh_token'].lower()};")
    for attribute in ("httponly", "samesite=strict", "secure", "path=/api/v1/auth"):
        assert attribute in refresh, (attribute, refresh)

    csrf = cookies["helixflow_csrf"]
    assert "httponly" not in csrf  # the dashboard's scripts read it
    for attribute in ("samesite=strict", "secure", "path=/;"):
        assert attribute in csrf + ";", (attribute, csrf)
    assert len(client.cookies["helixflow_csrf"]) >= 32


async def test_cookies_without_secure_for_plain_http_dev(database: Database) -> None:
    await store_users(database, ALICE)
    h = build(database, CONFIG.model_copy(update={"cookie_secure": False}))
    async with h.client() as c:
        response = await login(c)
    assert response.status_code == 200
    for header in set_cookies(response).values():
        assert "secure" not in header
        assert "samesite=strict" in header


async def test_wrong_password_and_unknown_user_read_the_same(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    wrong = await login(client, "alice", "not her password")
    unknown = await login(client, "mallory", "whatever")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert error(wrong)["code"] == "invalid_credentials"
    assert error(wrong)["type"] == "authentication_error"
    assert "set-cookie" not in wrong.headers
    entries = await audit_entries(harness)
    assert [e["action"] for e in entries] == ["user.login_failed"] * 2
    assert entries[0]["after"] == {"username": "alice"}


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"username": "alice"}, 400),
        ({"password": "x"}, 400),
        ({"username": "", "password": "x"}, 400),
        ({"username": "a" * 65, "password": "x"}, 400),
        ({"username": "alice", "password": ""}, 400),
        ({"username": "alice", "password": "x", "extra": 1}, 400),
        ({"username": 5, "password": "x"}, 400),
        (["alice", "x"], 400),
    ],
    ids=[
        "no-password",
        "no-username",
        "empty-name",
        "long-name",
        "empty-pw",
        "extra",
        "int",
        "list",
    ],
)
async def test_login_refuses_malformed_bodies(
    harness: Harness, client: httpx.AsyncClient, payload: Any, status: int
) -> None:
    response = await client.post("/api/v1/auth/login", json=payload)
    assert response.status_code == status, response.text
    assert error(response)["type"] == "invalid_request_error"
    assert harness.accounts.calls == []


async def test_login_refuses_non_json(client: httpx.AsyncClient) -> None:
    not_json = await client.post(
        "/api/v1/auth/login", content=b"{", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400
    empty = await client.post("/api/v1/auth/login")
    assert empty.status_code == 400
    form = await client.post("/api/v1/auth/login", data={"username": "a", "password": "b"})
    assert form.status_code in (400, 415)


async def test_login_throttled_per_user_name(harness: Harness) -> None:
    for i in range(LIMIT):  # from different addresses: only the name is common
        async with harness.client(f"10.0.0.{i + 1}") as c:
            assert (await login(c, "alice", "wrong")).status_code == 401
    async with harness.client("10.0.1.1") as c:
        throttled = await login(c, "ALICE")  # even the right password, any case
        assert throttled.status_code == 429
        assert error(throttled)["code"] == "too_many_login_attempts"
        assert error(throttled)["type"] == "rate_limit_error"
        assert throttled.headers["retry-after"] == "60"
        assert len(harness.accounts.calls) == LIMIT  # the password was not even checked
        assert (await login(c, "bob")).status_code == 200  # another name passes
        harness.ticks.now += 30
        assert (await login(c, "alice")).headers["retry-after"] == "30"
        harness.ticks.now += 30
        assert (await login(c, "alice")).status_code == 200


async def test_login_throttled_per_address(harness: Harness) -> None:
    async with harness.client("192.0.2.7") as c:
        for name in ("u1", "u2", "u3"):
            assert (await login(c, name, "x")).status_code == 401
        throttled = await login(c, "alice")
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) >= 1
    async with harness.client("192.0.2.8") as other:
        assert (await login(other, "alice")).status_code == 200


def test_throttle_forgets_old_attempts() -> None:
    ticks = FakeClock(TICK0)
    throttle = LoginThrottle(2, clock=ticks, max_keys=3)
    throttle.attempt("a")
    ticks.now += 59.5
    throttle.attempt("a")
    with pytest.raises(RateLimitError) as info:
        throttle.attempt("a")
    assert info.value.retry_after == 1  # 0.5 s, rounded up
    ticks.now += 0.5
    throttle.attempt("a")  # the first attempt left the window
    for key in ("b", "c", "d", "e"):
        throttle.attempt(key)
    assert len(throttle._attempts) <= 3
    with pytest.raises(ValueError, match="at least 1"):
        LoginThrottle(0)


# --- refresh ---------------------------------------------------------------------------------


async def test_refresh_by_cookie(harness: Harness, client: httpx.AsyncClient) -> None:
    first = (await login(client)).json()
    csrf = client.cookies["helixflow_csrf"]
    harness.clock.advance(60)
    response = await client.post("/api/v1/auth/refresh")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert body["expires_in"] == TTL
    assert response.headers["cache-control"] == "no-store"
    cookies = set_cookies(response)
    assert cookies["helixflow_refresh"].startswith(
        f"helixflow_refresh={body['refresh_token'].lower()};"
    )
    assert client.cookies["helixflow_csrf"] == csrf  # in-flight requests keep working
    assert (await harness.tokens.verify(body["access_token"])).sub == ALICE.id

    # The spent token shown again: the whole family is revoked.
    reused = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert reused.status_code == 401
    assert error(reused)["code"] == "refresh_token_reused"
    again = await client.post("/api/v1/auth/refresh")  # the cookie holds the newest one
    assert again.status_code == 401
    assert error(again)["code"] == "refresh_token_reused"
    # A failed cookie refresh clears the dashboard's cookies.
    assert "max-age=0" in set_cookies(again)["helixflow_session"]
    assert "helixflow_refresh" not in client.cookies


async def test_refresh_by_body(harness: Harness) -> None:
    async with harness.client() as c:
        first = (await login(c)).json()
    async with harness.client() as fresh:  # no cookies at all
        response = await fresh.post(
            "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert response.status_code == 200, response.text
        assert (await harness.tokens.verify(response.json()["access_token"])).sub == ALICE.id
        assert "helixflow_csrf" in set_cookies(response)


async def test_refresh_without_a_token(client: httpx.AsyncClient) -> None:
    for response in (
        await client.post("/api/v1/auth/refresh"),
        await client.post("/api/v1/auth/refresh", json={}),
        await client.post("/api/v1/auth/refresh", json={"refresh_token": None}),
    ):
        assert response.status_code == 401, response.text
        assert error(response)["code"] == "missing_token"


@pytest.mark.parametrize(
    "payload",
    [{"refresh_token": 5}, {"refresh_token": ""}, {"refresh_token": "x" * 300}, {"token": "a"}],
    ids=["int", "empty", "long", "extra"],
)
async def test_refresh_refuses_malformed_bodies(client: httpx.AsyncClient, payload: Any) -> None:
    response = await client.post("/api/v1/auth/refresh", json=payload)
    assert response.status_code == 400, response.text
    assert error(response)["type"] == "invalid_request_error"


async def test_refresh_with_an_unknown_token(harness: Harness) -> None:
    async with harness.client() as c:
        by_body = await c.post("/api/v1/auth/refresh", json={"refresh_token": "hfr_nope"})
        assert by_body.status_code == 401
        assert error(by_body)["code"] == "invalid_token"
        c.cookies.set("helixflow_refresh", "hfr_nope", domain="hf.test", path="/api/v1/auth")
        by_cookie = await c.post("/api/v1/auth/refresh")
        assert by_cookie.status_code == 401
        assert error(by_cookie)["code"] == "invalid_token"
        assert set(set_cookies(by_cookie)) == {
            "helixflow_session",
            "helixflow_refresh",
            "helixflow_csrf",
        }


async def test_refresh_token_expired(harness: Harness, client: httpx.AsyncClient) -> None:
    await login(client)
    harness.clock.advance(REFRESH_TTL)
    response = await client.post("/api/v1/auth/refresh")
    assert response.status_code == 401
    assert error(response)["code"] == "token_expired"


# --- logout ----------------------------------------------------------------------------------


async def test_logout_by_bearer(harness: Harness) -> None:
    async with harness.client() as c:
        tokens = (await login(c)).json()
    async with harness.client() as api:  # no cookies: the header and the body only
        response = await api.post(
            "/api/v1/auth/logout",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
            json={"refresh_token": tokens["refresh_token"]},
        )
        assert response.status_code == 204, response.text
        assert response.content == b""
    with pytest.raises(AuthenticationError) as info:
        await harness.tokens.verify(tokens["access_token"])
    assert info.value.code == "token_revoked"
    with pytest.raises(AuthenticationError) as info:
        await harness.tokens.refresh(tokens["refresh_token"])
    assert info.value.code == "refresh_token_reused"
    assert (await audit_entries(harness))[-1] == {
        "actor": "user:alice",
        "action": "user.logout",
        "target_id": ALICE.id,
        "after": None,
        "ip": "127.0.0.1",
    }


async def test_logout_by_cookies(harness: Harness, client: httpx.AsyncClient) -> None:
    tokens = (await login(client)).json()
    response = await client.post("/api/v1/auth/logout")
    assert response.status_code == 204, response.text
    cookies = set_cookies(response)
    assert set(cookies) == {"helixflow_session", "helixflow_refresh", "helixflow_csrf"}
    assert all("max-age=0" in header for header in cookies.values())
    assert "path=/api/v1/auth" in cookies["helixflow_refresh"]
    assert not client.cookies
    with pytest.raises(AuthenticationError) as info:
        await harness.tokens.verify(tokens["access_token"])
    assert info.value.code == "token_revoked"


async def test_logout_after_the_access_token_expired(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    tokens = (await login(client)).json()
    harness.clock.advance(TTL + 60)
    response = await client.post("/api/v1/auth/logout")  # refresh cookie still valid
    assert response.status_code == 204, response.text
    with pytest.raises(AuthenticationError) as info:
        await harness.tokens.refresh(tokens["refresh_token"])
    assert info.value.code == "refresh_token_reused"


async def test_logout_needs_a_session(client: httpx.AsyncClient) -> None:
    nothing = await client.post("/api/v1/auth/logout")
    assert nothing.status_code == 401
    assert error(nothing)["code"] == "invalid_token"
    forged = await client.post(
        "/api/v1/auth/logout", headers={"Authorization": "Bearer eyJhbGciOi.eyJzdWIi.c2ln"}
    )
    assert forged.status_code == 401
    assert error(forged)["code"] == "invalid_token"
    bad_body = await client.post("/api/v1/auth/logout", json={"refresh_token": 7})
    assert bad_body.status_code == 400


# --- JWKS and missing services ---------------------------------------------------------------


async def test_jwks(harness: Harness, client: httpx.AsyncClient) -> None:
    empty = await client.get("/.well-known/jwks.json")
    assert empty.status_code == 200
    assert empty.json() == {"keys": []}
    token = (await login(client)).json()["access_token"]
    kid = (await harness.tokens.verify(token)).kid
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=300"
    (key,) = response.json()["keys"]
    assert key["kid"] == kid
    assert {key["kty"], key["alg"], key["use"]} == {"RSA", "RS256", "sig"}
    assert set(key) == {"kid", "kty", "alg", "use", "n", "e"}


async def test_services_missing_is_503() -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
        for response in (
            await c.post("/api/v1/auth/login", json={"username": "a", "password": "b"}),
            await c.post("/api/v1/auth/refresh", json={"refresh_token": "hfr_x"}),
            await c.post("/api/v1/auth/logout"),
            await c.get("/.well-known/jwks.json"),
        ):
            assert response.status_code == 503, response.text
            assert error(response)["code"] == "sessions_unavailable"


async def test_accounts_missing_is_503(harness: Harness, client: httpx.AsyncClient) -> None:
    del harness.app.state.accounts
    response = await login(client)
    assert response.status_code == 503
    assert error(response)["code"] == "accounts_unavailable"
