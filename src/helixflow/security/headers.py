"""Security headers on every HTTP response (pure ASGI: a few list operations per response).

Each header is added only when the application has not set it already, so a route that needs
something else (a download's own Cache-Control, a page that may be framed) keeps its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Header = tuple[bytes, bytes]

API_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
"""For the API and the same-origin dashboard at ``/ui``: its scripts, styles, images and
``fetch`` calls come from this origin only; no plugins, no ``<base>``, never framed."""

DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src 'self' data: https://fonts.gstatic.com; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""For FastAPI's interactive docs, whose pages load Swagger UI or ReDoc from a CDN and start
them with an inline script."""

DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
AUTH_PREFIX = "/api/v1/auth/"
HSTS_MAX_AGE_S = 31_536_000  # a year

_BASE: tuple[Header, ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
)
_NO_STORE: Header = (b"cache-control", b"no-store")


class SecurityHeadersMiddleware:
    """Add the security headers to every HTTP response.

    ``Strict-Transport-Security`` only on requests that came over HTTPS (the ASGI scope's
    scheme, which uvicorn sets from ``X-Forwarded-Proto`` for the proxies it trusts:
    ``--forwarded-allow-ips``); ``Cache-Control: no-store`` on ``/api/v1/auth/*``, whose
    replies carry tokens.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        csp: str = API_CSP,
        docs_csp: str = DOCS_CSP,
        docs_paths: frozenset[str] = DOCS_PATHS,
        hsts_max_age_s: int = HSTS_MAX_AGE_S,
    ) -> None:
        self.app = app
        self.docs_paths = docs_paths
        hsts: Header = (b"strict-transport-security", f"max-age={hsts_max_age_s}".encode())
        # Every combination computed once: per response only a tuple is chosen.
        plain = (*_BASE, (b"content-security-policy", csp.encode("latin-1")))
        docs = (*_BASE, (b"content-security-policy", docs_csp.encode("latin-1")))
        self._sets: dict[tuple[bool, bool, bool], tuple[Header, ...]] = {
            (is_docs, https, auth): (
                *(docs if is_docs else plain),
                *((hsts,) if https else ()),
                *((_NO_STORE,) if auth else ()),
            )
            for is_docs in (False, True)
            for https in (False, True)
            for auth in (False, True)
        }
        self._names = frozenset(name for headers in self._sets.values() for name, _ in headers)

    def headers_for(self, scope: Scope) -> tuple[Header, ...]:
        """The headers a response to this request gets (unless the app set them)."""
        path: str = scope.get("path", "")
        return self._sets[
            (
                path in self.docs_paths,
                scope.get("scheme") == "https",
                path.startswith(AUTH_PREFIX),
            )
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.headers_for(scope)
        names = self._names

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = _merged(message.get("headers", ()), extra, names)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _merged(
    headers: Iterable[Header], extra: tuple[Header, ...], names: frozenset[bytes]
) -> list[Header]:
    """``headers`` followed by those of ``extra`` whose name it does not already have.

    ``names``: every name ``extra`` may hold; the usual response shares none of them and
    takes the fast path (one set lookup per header).
    """
    current = list(headers)
    for name, _ in current:
        if name.lower() in names:
            present = {name.lower() for name, _ in current}
            current.extend(header for header in extra if header[0] not in present)
            return current
    current.extend(extra)
    return current
