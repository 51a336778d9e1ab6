"""Who is calling: the auth middleware resolves each request's principal once.

Credentials, in order: ``Authorization: Bearer <API key or access token>``, else the dashboard's
``helixflow_session`` cookie (an access token; unsafe methods then need the CSRF token, see
``csrf.py``). While authentication is not enforced (``security.auth: off``, or ``auto`` with no
key and no user yet, on a loopback address only) every request acts as ``ANONYMOUS`` and
credentials are not looked at. Public paths (health, JWKS, login, the dashboard's files) need
none. A missing, malformed, wrong, expired or revoked credential is a 401 envelope with
``WWW-Authenticate: Bearer``, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from helixflow.api.auth import PRINCIPAL_KEY
from helixflow.errors import AuthenticationError, HelixFlowError, NotFoundError
from helixflow.security.identity import ANONYMOUS, Principal, Role, UserRecord

log = logging.getLogger(__name__)

SESSION_COOKIE = "helixflow_session"
PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/ready",
        "/metrics",
        "/.well-known/jwks.json",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
    }
)
PUBLIC_PREFIXES = ("/ui",)
AUTH_PREFIX = "/api/v1/auth/"
_MAX_CREDENTIAL = 4096
UNAUTHENTICATED = Principal(kind="anonymous", role="viewer", name="unauthenticated")
"""A request on a public path without credentials while authentication is enforced: any
``require(...)`` check answers 401 for it."""
_JWT_PREFIX = "eyJ"


class KeyVerifier(Protocol):
    async def principal_for_key(self, plaintext: str) -> Principal:
        """The key's principal: its role capped at its owner's, the key's and the owner's
        limits; 401 for a wrong, expired or revoked key or a deactivated owner."""
        ...

    async def get_user(self, user_id: str) -> UserRecord | None: ...

    async def any_credentials(self) -> bool: ...


class AccessClaims(Protocol):
    sub: str
    name: str
    role: str
    jti: str
    exp: datetime


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Any: ...


class AuthSwitch:
    """Whether authentication is enforced now: ``required`` always, ``off`` never, ``auto``
    once any credential exists (checked at start, when this process creates one, and every
    ``recheck_s`` for the ones other replicas create)."""

    def __init__(
        self,
        mode: str,
        credentials_exist: Callable[[], Awaitable[bool]],
        *,
        recheck_s: float = 5.0,
    ) -> None:
        self._mode = mode
        self._exist = credentials_exist
        self._recheck_s = recheck_s
        self._enforced = mode == "required"
        self._task: asyncio.Task[None] | None = None

    @property
    def enforced(self) -> bool:
        return self._enforced

    def credentials_created(self) -> None:
        if self._mode == "auto":
            self._enforced = True

    async def refresh(self) -> bool:
        if self._mode == "auto" and not self._enforced:
            self._enforced = await self._exist()
            if self._enforced:
                log.info("authentication is now required: an API key or user exists")
        return self._enforced

    async def start(self) -> None:
        await self.refresh()
        if self._mode == "auto" and not self._enforced:
            self._task = asyncio.create_task(self._watch(), name="auth-switch")

    async def _watch(self) -> None:
        while not self._enforced:
            await asyncio.sleep(self._recheck_s)
            try:
                await self.refresh()
            except Exception as exc:  # the database may be away for a while
                log.warning("could not check for credentials: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Authenticator:
    """Turns a credential into a :class:`Principal` (API keys and access tokens)."""

    def __init__(self, accounts: KeyVerifier, tokens: TokenVerifier | None) -> None:
        self._accounts = accounts
        self._tokens = tokens

    async def from_bearer(self, credential: str, *, via_cookie: bool = False) -> Principal:
        if credential.startswith(_JWT_PREFIX) and credential.count(".") == 2:
            return await self._from_token(credential, via_cookie=via_cookie)
        if via_cookie:
            raise AuthenticationError(
                "The session cookie is not a valid token.", code="invalid_token"
            )
        return await self._accounts.principal_for_key(credential)

    async def _user(self, user_id: str) -> UserRecord | None:
        try:
            return await self._accounts.get_user(user_id)
        except NotFoundError:
            return None

    async def _from_token(self, token: str, *, via_cookie: bool) -> Principal:
        if self._tokens is None:
            raise AuthenticationError("Sessions are not available.", code="invalid_token")
        claims = await self._tokens.verify(token)
        user = await self._user(claims.sub)
        if user is None or not user.active:
            raise AuthenticationError(
                "This user no longer exists or is deactivated.", code="inactive_user"
            )
        role: Role = user.role
        return Principal(
            kind="user",
            role=role,
            name=user.username,
            user_id=user.id,
            user_limits=user.limits,
            token_id=claims.jti,
            token_expires_at=claims.exp,
            via_cookie=via_cookie,
        )


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


def bearer_credential(value: bytes) -> str:
    """The credential of an ``Authorization`` header value; 401 when it is not
    ``Bearer <token>`` with a printable token."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise AuthenticationError(
            "The Authorization header must be ASCII: `Bearer <API key>`.",
            code="invalid_authorization",
        ) from None
    scheme, _, credential = text.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise AuthenticationError(
            "Send `Authorization: Bearer <API key>` (or a session token).",
            code="invalid_authorization",
        )
    if len(credential) > _MAX_CREDENTIAL or not credential.isprintable() or " " in credential:
        raise AuthenticationError(
            "The bearer credential is malformed.", code="invalid_authorization"
        )
    return credential


class AuthMiddleware:
    """Pure ASGI: resolves the principal into ``scope["state"]["principal"]``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        app_state = scope["app"].state
        switch: AuthSwitch | None = getattr(app_state, "auth_switch", None)
        authenticator: Authenticator | None = getattr(app_state, "authenticator", None)
        if (
            switch is None
            or authenticator is None
            or not switch.enforced
            or scope.get("method") == "OPTIONS"
        ):
            state[PRINCIPAL_KEY] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._resolve(scope, authenticator)
        except HelixFlowError as exc:
            await _refuse(send, exc)
            return
        state[PRINCIPAL_KEY] = principal if principal is not None else UNAUTHENTICATED
        await self.app(scope, receive, send)

    @staticmethod
    async def _resolve(scope: Scope, authenticator: Authenticator) -> Principal | None:
        header = _header(scope, b"authorization")
        if header is not None:
            return await authenticator.from_bearer(bearer_credential(header))
        cookie = _cookie(scope, SESSION_COOKIE)
        if cookie is not None:
            try:
                return await authenticator.from_bearer(cookie, via_cookie=True)
            except AuthenticationError:
                # An expired session must still reach refresh and logout.
                if not scope.get("path", "").startswith(AUTH_PREFIX):
                    raise
        if _is_public(scope.get("path", "")):
            return None
        raise AuthenticationError(
            "This server requires an API key: send `Authorization: Bearer <API key>`.",
            code="missing_api_key",
        )


async def _refuse(send: Send, exc: HelixFlowError) -> None:
    body = orjson.dumps(exc.envelope())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b'Bearer realm="helixflow"'),
    ]
    headers.extend((k.lower().encode(), v.encode()) for k, v in exc.headers.items())
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
