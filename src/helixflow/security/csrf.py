"""CSRF protection for requests authenticated by the dashboard's session cookie.

A browser attaches cookies to requests that any site makes, so a request authenticated by
the cookie proves nothing about who wrote it. The dashboard therefore also sends the value of
the ``helixflow_csrf`` cookie (readable only by scripts of the dashboard's own origin) in the
``X-CSRF-Token`` header: the double-submit pattern. Every request with an unsafe method whose
principal came from the cookie must carry both, equal; anything else gets 403 ``csrf_failed``.

Requests authenticated by an ``Authorization`` header need no token (a browser never adds
that header by itself), nor do login and refresh, which run before a token exists and are
protected by their own ``SameSite=Strict`` cookies.

While authentication is off (loopback only: every request acts as ``ANONYMOUS``, an admin),
the ambient authority is the network position: any web page the local user opens could send
a simple cross-site POST to ``http://127.0.0.1``. So unsafe requests that a browser marks as
coming from another site (``Sec-Fetch-Site: cross-site`` or ``same-site``) are refused then,
unless their ``Origin`` is one of ``trusted_origins`` (the CORS origins). Clients other than
browsers send no ``Sec-Fetch-Site`` and are not affected.
"""

from __future__ import annotations

import hmac
import secrets

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from helixflow.errors import PermissionDeniedError
from helixflow.security.identity import ANONYMOUS, Principal

CSRF_COOKIE = "helixflow_csrf"
CSRF_HEADER = "X-CSRF-Token"
PRINCIPAL_KEY = "principal"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""Every other method (POST, PUT, PATCH, DELETE and any extension method) is checked."""
EXEMPT_PATHS = frozenset({"/api/v1/auth/login", "/api/v1/auth/refresh"})

_HEADER = CSRF_HEADER.lower().encode("latin-1")
_FOREIGN_SITES = frozenset({b"cross-site", b"same-site"})
_COOKIE_PREFIX = CSRF_COOKIE.encode("latin-1") + b"="


def issue_csrf_token() -> str:
    """A new token (256 random bits, URL-safe): set it as the ``helixflow_csrf`` cookie
    (``set_csrf_cookie``) when a session starts or refreshes."""
    return secrets.token_urlsafe(32)


def set_csrf_cookie(response: Response, token: str, *, secure: bool, max_age_s: int) -> None:
    """Set the CSRF cookie: readable by the dashboard's scripts (not HttpOnly, that is the
    point), sent only to this site (SameSite=Strict), over HTTPS when ``secure``
    (``security.cookie_secure``)."""
    response.set_cookie(
        CSRF_COOKIE,
        token,
        max_age=max_age_s,
        path="/",
        secure=secure,
        httponly=False,
        samesite="strict",
    )


class CSRFMiddleware:
    """Refuse unsafe requests authenticated by cookie without a matching ``X-CSRF-Token``,
    and unsafe cross-site browser requests while authentication is off.

    Must run inside (after) the auth middleware, which puts the principal in
    ``scope["state"]["principal"]``. ``trusted_origins``: origins (``scheme://host[:port]``)
    whose cross-site requests are expected (``security.cors.allow_origins``, normalized by
    ``cors.trusted_origins``); ``*`` trusts every origin.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        exempt_paths: frozenset[str] = EXEMPT_PATHS,
        trusted_origins: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.exempt_paths = exempt_paths
        self.trust_all = "*" in trusted_origins
        self.trusted_origins = frozenset(o.encode("latin-1") for o in trusted_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        state = scope.get("state")
        principal = state.get(PRINCIPAL_KEY) if state is not None else None
        if isinstance(principal, Principal) and principal.via_cookie:
            problem = None if scope["path"] in self.exempt_paths else _check_token(scope)
        elif (principal is None or principal is ANONYMOUS) and not self.trust_all:
            problem = None if scope["path"] in self.exempt_paths else self._check_site(scope)
        else:
            problem = None
        if problem is None:
            await self.app(scope, receive, send)
            return
        await _reject(send, problem)

    def _check_site(self, scope: Scope) -> str | None:
        """None unless a browser says the request comes from another, untrusted site."""
        site: bytes | None = None
        origin: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"sec-fetch-site":
                site = value.strip().lower()
            elif name == b"origin":
                origin = value.strip().lower()
        if site not in _FOREIGN_SITES or origin in self.trusted_origins:
            return None
        return (
            "Cross-site request refused: this server runs without authentication, so web "
            "pages of other sites may not change anything on it. Add the page's origin to "
            "security.cors.allow_origins, or enable authentication."
        )


def _check_token(scope: Scope) -> str | None:
    """None when the header's token equals the cookie's, else what is wrong."""
    sent: bytes | None = None
    cookie: bytes | None = None
    for name, value in scope["headers"]:
        if name == _HEADER:
            sent = value.strip()
        elif name == b"cookie" and cookie is None:
            cookie = _cookie_value(value)
    if not sent:
        return f"Missing {CSRF_HEADER} header: send the value of the {CSRF_COOKIE} cookie in it."
    if not cookie:
        return f"Missing {CSRF_COOKIE} cookie: sign in again to get a new one."
    if not hmac.compare_digest(sent, cookie):
        return f"The {CSRF_HEADER} header does not match the {CSRF_COOKIE} cookie."
    return None


def _cookie_value(header: bytes) -> bytes | None:
    """The CSRF cookie's value in one ``Cookie`` header, if it is there."""
    for part in header.split(b";"):
        part = part.strip()
        if part.startswith(_COOKIE_PREFIX):
            value = part[len(_COOKIE_PREFIX) :].strip()
            if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
                value = value[1:-1]
            return value
    return None


async def _reject(send: Send, message: str) -> None:
    error = PermissionDeniedError(message, code="csrf_failed")
    body = orjson.dumps(error.envelope())
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
