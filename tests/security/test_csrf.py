"""CSRFMiddleware: cookie-authenticated unsafe requests need X-CSRF-Token equal to the cookie."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from helixflow.api.errors import install_error_handlers
from helixflow.security.csrf import (
    CSRF_COOKIE,
    CSRF_HEADER,
    CSRFMiddleware,
    issue_csrf_token,
    set_csrf_cookie,
)
from helixflow.security.identity import ANONYMOUS, Principal

TOKEN = issue_csrf_token()
COOKIE_USER = Principal(kind="user", role="admin", name="ada", user_id="u1", via_cookie=True)
HEADER_USER = Principal(kind="user", role="admin", name="ada", user_id="u1", via_cookie=False)
KEY = Principal(kind="key", role="developer", name="ci", key_id="k1")


class FakeAuth:
    """Stands in for the auth middleware: the principal named by the ``X-Test-Auth`` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.principals = {
            b"cookie": COOKIE_USER,
            b"header": HEADER_USER,
            b"key": KEY,
            b"anonymous": ANONYMOUS,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            which = dict(scope["headers"]).get(b"x-test-auth")
            if which is not None:
                scope.setdefault("state", {})["principal"] = self.principals[which]
        await self.app(scope, receive, send)


def make_app(trusted_origins: frozenset[str] = frozenset()) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.api_route("/api/v1/keys", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def keys() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/api/v1/auth/login")
    async def login(response: Response) -> dict[str, bool]:
        set_csrf_cookie(response, issue_csrf_token(), secure=True, max_age_s=900)
        return {"ok": True}

    @app.post("/api/v1/auth/refresh")
    async def refresh() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(CSRFMiddleware, trusted_origins=trusted_origins)
    app.add_middleware(FakeAuth)  # added last: runs first, as the real auth middleware must
    return app


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://test")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app()) as client:
        yield client


def as_cookie_user(token: str | None = None, cookie: str | None = TOKEN) -> dict[str, str]:
    headers = {"X-Test-Auth": "cookie"}
    if cookie is not None:
        headers["Cookie"] = f"helixflow_session=abc; {CSRF_COOKIE}={cookie}"
    if token is not None:
        headers[CSRF_HEADER] = token
    return headers


def assert_csrf_refused(response: httpx.Response) -> None:
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "csrf_failed"
    assert error["type"] == "permission_error"
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_cookie_request_without_token_is_refused(
    http: httpx.AsyncClient, method: str
) -> None:
    response = await http.request(method, "/api/v1/keys", headers=as_cookie_user())
    assert_csrf_refused(response)
    assert CSRF_HEADER in response.json()["error"]["message"]


async def test_wrong_token_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/v1/keys", headers=as_cookie_user(token=issue_csrf_token()))
    assert_csrf_refused(response)
    assert "does not match" in response.json()["error"]["message"]


async def test_token_without_cookie_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/v1/keys", headers=as_cookie_user(token=TOKEN, cookie=None))
    assert_csrf_refused(response)
    assert CSRF_COOKIE in response.json()["error"]["message"]


async def test_empty_token_and_cookie_are_refused(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/v1/keys", headers=as_cookie_user(token="", cookie=""))
    assert_csrf_refused(response)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_right_token_passes(http: httpx.AsyncClient, method: str) -> None:
    response = await http.request(method, "/api/v1/keys", headers=as_cookie_user(token=TOKEN))
    assert response.status_code == 200
    assert response.json() == {"ok": True}


async def test_quoted_cookie_value_matches(http: httpx.AsyncClient) -> None:
    headers = as_cookie_user(token=TOKEN, cookie=f'"{TOKEN}"')
    assert (await http.post("/api/v1/keys", headers=headers)).status_code == 200


async def test_non_ascii_token_is_refused_not_an_error(http: httpx.AsyncClient) -> None:
    headers = as_cookie_user(cookie=TOKEN)
    headers[CSRF_HEADER] = "é" * 8
    response = await http.post(
        "/api/v1/keys", headers={k.encode(): v.encode() for k, v in headers.items()}
    )
    assert_csrf_refused(response)


@pytest.mark.parametrize("who", ["header", "key"])
async def test_header_authenticated_requests_need_no_token(
    http: httpx.AsyncClient, who: str
) -> None:
    response = await http.post("/api/v1/keys", headers={"X-Test-Auth": who})
    assert response.status_code == 200


async def test_no_principal_needs_no_token(http: httpx.AsyncClient) -> None:
    assert (await http.post("/api/v1/keys")).status_code == 200


async def test_safe_methods_need_no_token(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/v1/keys", headers=as_cookie_user())).status_code == 200


async def test_extension_methods_are_checked(http: httpx.AsyncClient) -> None:
    response = await http.request("PROPFIND", "/api/v1/keys", headers=as_cookie_user())
    assert_csrf_refused(response)


@pytest.mark.parametrize("path", ["/api/v1/auth/login", "/api/v1/auth/refresh"])
async def test_login_and_refresh_are_exempt(http: httpx.AsyncClient, path: str) -> None:
    response = await http.post(path, headers=as_cookie_user())
    assert response.status_code == 200


async def test_login_sets_a_script_readable_strict_cookie(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/v1/auth/login")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{CSRF_COOKIE}=")
    lowered = cookie.lower()
    assert "samesite=strict" in lowered
    assert "secure" in lowered
    assert "httponly" not in lowered
    assert "path=/" in lowered


def test_tokens_are_random_and_long() -> None:
    tokens = {issue_csrf_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(token) >= 43 for token in tokens)


EVIL = "https://evil.example"


def from_browser(site: str, origin: str = EVIL, who: str | None = "anonymous") -> dict[str, str]:
    headers = {"Sec-Fetch-Site": site, "Origin": origin}
    if who is not None:
        headers["X-Test-Auth"] = who
    return headers


@pytest.mark.parametrize("site", ["cross-site", "same-site", "CROSS-SITE"])
@pytest.mark.parametrize("who", ["anonymous", None])
async def test_auth_off_refuses_unsafe_requests_from_other_sites(
    http: httpx.AsyncClient, site: str, who: str | None
) -> None:
    response = await http.post("/api/v1/keys", headers=from_browser(site, who=who))
    assert_csrf_refused(response)
    assert "Cross-site" in response.json()["error"]["message"]


@pytest.mark.parametrize("site", ["same-origin", "none"])
async def test_auth_off_allows_same_origin_and_direct_requests(
    http: httpx.AsyncClient, site: str
) -> None:
    response = await http.post("/api/v1/keys", headers=from_browser(site, "https://test"))
    assert response.status_code == 200


async def test_auth_off_allows_clients_that_are_not_browsers(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/v1/keys", headers={"X-Test-Auth": "anonymous"})
    assert response.status_code == 200


async def test_auth_off_allows_safe_cross_site_requests(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/keys", headers=from_browser("cross-site"))
    assert response.status_code == 200


@pytest.mark.parametrize("who", ["key", "header"])
async def test_cross_site_check_leaves_header_auth_alone(http: httpx.AsyncClient, who: str) -> None:
    response = await http.post("/api/v1/keys", headers=from_browser("cross-site", who=who))
    assert response.status_code == 200


async def test_trusted_origins_may_call_cross_site() -> None:
    app = make_app(trusted_origins=frozenset({"https://app.example.com"}))
    async with client_for(app) as http:
        trusted = await http.post(
            "/api/v1/keys", headers=from_browser("cross-site", "https://app.example.com")
        )
        other = await http.post("/api/v1/keys", headers=from_browser("cross-site"))
    assert trusted.status_code == 200
    assert_csrf_refused(other)


async def test_wildcard_trust_turns_the_site_check_off() -> None:
    async with client_for(make_app(trusted_origins=frozenset({"*"}))) as http:
        response = await http.post("/api/v1/keys", headers=from_browser("cross-site"))
    assert response.status_code == 200


async def test_trusted_origin_does_not_replace_the_token() -> None:
    app = make_app(trusted_origins=frozenset({EVIL}))
    async with client_for(app) as http:
        response = await http.post(
            "/api/v1/keys", headers={**from_browser("cross-site"), **as_cookie_user()}
        )
    assert_csrf_refused(response)


async def test_refusal_in_the_full_stack_carries_security_and_cors_headers() -> None:
    """The order app.py uses: security headers, CORS, (request id...), auth, CSRF."""
    from starlette.middleware.cors import CORSMiddleware

    from helixflow.security.cors import cors_middleware_kwargs
    from helixflow.security.headers import SecurityHeadersMiddleware
    from helixflow.security_config import CorsConfig

    app = make_app()  # CSRF inside the fake auth
    kwargs = cors_middleware_kwargs(
        CorsConfig(allow_origins=["https://app.example.com"], allow_credentials=True)
    )
    assert kwargs is not None
    app.add_middleware(CORSMiddleware, **kwargs)
    app.add_middleware(SecurityHeadersMiddleware)
    async with client_for(app) as http:
        response = await http.post(
            "/api/v1/keys",
            headers={**as_cookie_user(), "Origin": "https://app.example.com"},
        )
    assert_csrf_refused(response)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
