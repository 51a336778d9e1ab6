"""SecurityHeadersMiddleware: every response gets the headers, without overriding the app's."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from helixflow.api.errors import install_error_handlers
from helixflow.errors import RateLimitError
from helixflow.security.headers import API_CSP, DOCS_CSP, SecurityHeadersMiddleware

ALWAYS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "content-security-policy": API_CSP,
}


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/v1/models")
    async def models() -> dict[str, str]:
        return {"object": "list"}

    @app.post("/api/v1/auth/login")
    async def login() -> dict[str, str]:
        return {"access_token": "t"}

    @app.get("/api/v1/auth/own-cache")
    async def own_cache() -> JSONResponse:
        return JSONResponse({}, headers={"Cache-Control": "private, max-age=5"})

    @app.get("/framable")
    async def framable() -> JSONResponse:
        return JSONResponse({}, headers={"X-Frame-Options": "SAMEORIGIN"})

    @app.get("/limited")
    async def limited() -> None:
        raise RateLimitError("slow down", retry_after=3)

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app.add_middleware(SecurityHeadersMiddleware)
    return app


def client(app: object, base_url: str = "http://test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)  # type: ignore[arg-type]


def assert_always(response: httpx.Response) -> None:
    for name, value in ALWAYS.items():
        assert response.headers.get(name) == value, name
    assert "camera=()" in response.headers["permissions-policy"]


async def test_every_response_gets_the_headers() -> None:
    async with client(make_app()) as http:
        for response in (
            await http.get("/v1/models"),
            await http.get("/nowhere"),  # 404 from the framework
            await http.get("/limited"),  # an error envelope
            await http.get("/stream"),
        ):
            assert_always(response)
        assert (await http.get("/limited")).headers["retry-after"] == "3"


async def test_csp_locks_down_the_api_and_dashboard() -> None:
    for directive in (
        "default-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
    ):
        assert directive in API_CSP
    assert "unsafe-inline" not in API_CSP


async def test_docs_pages_get_a_csp_that_lets_them_load() -> None:
    async with client(make_app()) as http:
        docs = await http.get("/docs")
        api = await http.get("/v1/models")
    assert docs.status_code == 200
    assert docs.headers["content-security-policy"] == DOCS_CSP
    assert "https://cdn.jsdelivr.net" in DOCS_CSP
    assert api.headers["content-security-policy"] == API_CSP


async def test_hsts_only_over_https() -> None:
    app = make_app()
    async with client(app) as http:
        plain = await http.get("/v1/models")
    async with client(app, "https://test") as https:
        secure = await https.get("/v1/models")
    assert "strict-transport-security" not in plain.headers
    assert secure.headers["strict-transport-security"] == "max-age=31536000"
    assert_always(secure)


async def test_hsts_max_age_is_configurable() -> None:
    app = FastAPI()
    wrapped = SecurityHeadersMiddleware(app, hsts_max_age_s=60)
    async with client(wrapped, "https://test") as https:
        response = await https.get("/nowhere")
    assert response.headers["strict-transport-security"] == "max-age=60"


async def test_auth_responses_are_not_stored() -> None:
    async with client(make_app()) as http:
        login = await http.post("/api/v1/auth/login")
        other = await http.get("/v1/models")
        own = await http.get("/api/v1/auth/own-cache")
    assert login.headers["cache-control"] == "no-store"
    assert "cache-control" not in other.headers
    assert own.headers["cache-control"] == "private, max-age=5"  # the app's own wins


async def test_a_header_the_app_set_is_kept_and_not_doubled() -> None:
    async with client(make_app()) as http:
        response = await http.get("/framable")
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_app_headers_in_any_case_are_recognized() -> None:
    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"X-Frame-Options", b"SAMEORIGIN")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    async with client(SecurityHeadersMiddleware(raw)) as http:
        response = await http.get("/")
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    await SecurityHeadersMiddleware(app)({"type": "lifespan"}, _never, _never_send)
    assert seen == ["lifespan"]


async def _never() -> dict[str, object]:
    raise AssertionError("not called")


async def _never_send(message: object) -> None:
    raise AssertionError("not called")


async def test_docs_csp_allows_every_host_the_docs_pages_load_from() -> None:
    async with client(make_app()) as http:
        pages = [(await http.get(path)).text for path in ("/docs", "/redoc")]
    hosts = {host for page in pages for host in re.findall(r"https://[^/\"' ]+", page)}
    assert hosts  # the pages do load from CDNs
    for host in hosts:
        assert host in DOCS_CSP, host
