"""CORS: which browser origins may call the API, as arguments for Starlette's CORSMiddleware.

No origin is allowed by default (the dashboard is served from the API's own origin and needs
no CORS). ``security.cors.allow_origins`` lists the others; a wildcard origin together with
credentials (cookies) is refused, since it would let any site act with a user's session.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from helixflow.security_config import CorsConfig

EXPOSE_HEADERS: tuple[str, ...] = (
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-helixflow-target",
    "x-helixflow-route-reason",
    "x-helixflow-cache",
)
"""Response headers a browser script may read (Access-Control-Expose-Headers takes no
patterns, so each is named)."""


def cors_middleware_kwargs(config: CorsConfig) -> dict[str, Any] | None:
    """Keyword arguments for ``app.add_middleware(CORSMiddleware, **kwargs)``; None when no
    origin is configured (then add no CORS middleware at all).

    Raises ValueError for a wildcard origin with ``allow_credentials``, and for an origin that
    is not ``scheme://host[:port]`` (browsers send exactly that; anything else never matches).
    """
    if not config.allow_origins:
        return None
    origins = [_origin(value) for value in config.allow_origins]
    if config.allow_credentials and "*" in origins:
        raise ValueError(
            "security.cors: allow_credentials is true and allow_origins contains '*'; that "
            "would let any website send requests with a user's cookies. List the trusted "
            "origins explicitly (e.g. https://app.example.com) or turn allow_credentials off."
        )
    return {
        "allow_origins": origins,
        "allow_credentials": config.allow_credentials,
        "allow_methods": [method.upper() for method in config.allow_methods],
        "allow_headers": list(config.allow_headers),
        "expose_headers": list(EXPOSE_HEADERS),
        "max_age": config.max_age_s,
    }


def trusted_origins(config: CorsConfig) -> frozenset[str]:
    """The configured origins as browsers send them (for ``CSRFMiddleware``); raises
    ValueError like ``cors_middleware_kwargs``."""
    return frozenset(_origin(value) for value in config.allow_origins)


def _origin(value: str) -> str:
    """``value`` as the browser sends it in ``Origin``: scheme://host[:port], lower case."""
    text = value.strip()
    if text == "*":
        return text
    parts = urlsplit(text.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"security.cors.allow_origins: {value!r} is not an origin; write "
            "scheme://host[:port], e.g. https://app.example.com"
        )
    try:
        port_ok = parts.port is not None or not parts.netloc.endswith(":")
    except ValueError:
        port_ok = False
    if not parts.hostname or not port_ok:
        raise ValueError(
            f"security.cors.allow_origins: {value!r} has no valid host and port; write "
            "scheme://host[:port], e.g. https://app.example.com:8443"
        )
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(
            f"security.cors.allow_origins: {value!r} has more than an origin; write only "
            "scheme://host[:port], without a path"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"
