"""cors_middleware_kwargs: nothing by default, explicit origins, no wildcard with credentials."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware

from helixflow.security.cors import EXPOSE_HEADERS, cors_middleware_kwargs, trusted_origins
from helixflow.security_config import CorsConfig

APP_ORIGIN = "https://app.example.com"


def test_no_origins_means_no_middleware() -> None:
    assert cors_middleware_kwargs(CorsConfig()) is None


def test_kwargs_carry_the_configuration() -> None:
    config = CorsConfig(
        allow_origins=[APP_ORIGIN + "/", "HTTP://LOCALHOST:5173"],
        allow_credentials=True,
        allow_methods=["get", "post"],
        max_age_s=60,
    )
    kwargs = cors_middleware_kwargs(config)
    assert kwargs is not None
    assert kwargs["allow_origins"] == [APP_ORIGIN, "http://localhost:5173"]
    assert kwargs["allow_credentials"] is True
    assert kwargs["allow_methods"] == ["GET", "POST"]
    assert "X-CSRF-Token" in kwargs["allow_headers"]
    assert kwargs["max_age"] == 60
    CORSMiddleware(FastAPI(), **kwargs)  # Starlette accepts every argument


def test_exposed_headers_let_scripts_read_ids_and_limits() -> None:
    kwargs = cors_middleware_kwargs(CorsConfig(allow_origins=[APP_ORIGIN]))
    assert kwargs is not None
    exposed = set(kwargs["expose_headers"])
    assert exposed == set(EXPOSE_HEADERS)
    assert "x-request-id" in exposed
    assert {
        f"x-ratelimit-{what}-{unit}"
        for what in ("limit", "remaining", "reset")
        for unit in ("requests", "tokens")
    } <= exposed
    assert {"x-helixflow-target", "x-helixflow-route-reason", "x-helixflow-cache"} <= exposed


def test_trusted_origins_are_normalized_like_the_cors_ones() -> None:
    config = CorsConfig(allow_origins=[APP_ORIGIN + "/", "HTTP://LOCALHOST:5173"])
    assert trusted_origins(config) == {APP_ORIGIN, "http://localhost:5173"}
    assert trusted_origins(CorsConfig()) == frozenset()
    with pytest.raises(ValueError, match="allow_origins"):
        trusted_origins(CorsConfig(allow_origins=["app.example.com"]))


def test_wildcard_with_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match=r"allow_credentials.*'\*'"):  # when the settings load
        CorsConfig(allow_origins=[APP_ORIGIN, "*"], allow_credentials=True)
    config = CorsConfig.model_construct(allow_origins=[APP_ORIGIN, "*"], allow_credentials=True)
    with pytest.raises(ValueError, match=r"allow_credentials.*'\*'"):
        cors_middleware_kwargs(config)


def test_wildcard_without_credentials_is_allowed() -> None:
    kwargs = cors_middleware_kwargs(CorsConfig(allow_origins=["*"]))
    assert kwargs is not None
    assert kwargs["allow_origins"] == ["*"]


@pytest.mark.parametrize(
    "origin",
    [
        "app.example.com",
        "https://app.example.com/ui",
        "ftp://app.example.com",
        "https://",
        "https://user@app.example.com",
        "https://app.example.com:99999",
        "https://a.com?x=1",
    ],
)
def test_something_that_is_not_an_origin_is_refused(origin: str) -> None:
    with pytest.raises(ValueError, match="allow_origins"):
        cors_middleware_kwargs(CorsConfig(allow_origins=[origin]))


def cors_app(config: CorsConfig) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> JSONResponse:
        return JSONResponse({}, headers={"x-request-id": "abc", "x-ratelimit-limit-requests": "5"})

    kwargs = cors_middleware_kwargs(config)
    assert kwargs is not None
    app.add_middleware(CORSMiddleware, **kwargs)
    return app


async def test_allowed_origin_gets_cors_headers_and_others_do_not() -> None:
    app = cors_app(CorsConfig(allow_origins=[APP_ORIGIN], allow_credentials=True))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        preflight = await http.options(
            "/v1/chat/completions",
            headers={
                "Origin": APP_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        refused = await http.options(
            "/v1/chat/completions",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        simple = await http.post("/v1/chat/completions", headers={"Origin": APP_ORIGIN})
        foreign = await http.post(
            "/v1/chat/completions", headers={"Origin": "https://evil.example"}
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert simple.headers["access-control-allow-origin"] == APP_ORIGIN
    exposed = simple.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed
    assert "x-ratelimit-limit-requests" in exposed
    assert "access-control-allow-origin" not in foreign.headers
