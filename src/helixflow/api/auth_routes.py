"""Dashboard sessions over HTTP: login, refresh, logout, and the JWKS.

``POST /api/v1/auth/login`` (``{"username", "password"}``), ``POST /api/v1/auth/refresh``
(the refresh token in the body or the ``helixflow_refresh`` cookie) and ``POST
/api/v1/auth/logout`` answer ``{access_token, token_type, expires_in, refresh_token}`` (logout:
204) and set, or clear, the dashboard's cookies:

- ``helixflow_session``: the access token (HttpOnly, SameSite=Strict, Path=/);
- ``helixflow_refresh``: the refresh token (HttpOnly, SameSite=Strict, Path=/api/v1/auth, so
  that no other request carries it);
- ``helixflow_csrf``: the double-submit token the dashboard's scripts echo in ``X-CSRF-Token``
  (readable by scripts; checked by ``security/csrf.py``).

All three are ``Secure`` unless ``security.cookie_secure`` is off (plain-HTTP development).
Login attempts are throttled per client address and per user name
(``security.login_attempts_per_minute``), and a wrong password reads exactly like an unknown
user. ``GET /.well-known/jwks.json`` publishes the public keys that verify access tokens.

The services come from ``app.state``: ``tokens`` (:class:`TokenService`), ``accounts`` (the
account service: ``authenticate`` and, when it has one, ``audit``) and ``login_throttle``
(created on first use when the lifespan set none).
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Protocol, cast

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from helixflow.api.errors import error_response
from helixflow.errors import AuthenticationError, RateLimitError, ServiceUnavailableError
from helixflow.security.csrf import CSRF_COOKIE, issue_csrf_token, set_csrf_cookie
from helixflow.security.identity import UserRecord
from helixflow.security.middleware import SESSION_COOKIE
from helixflow.security.tokens import AccessClaims, TokenPair, TokenService
from helixflow.security_config import SecurityConfig

router = APIRouter(tags=["auth"])

REFRESH_COOKIE = "helixflow_refresh"
REFRESH_COOKIE_PATH = "/api/v1/auth"
JWKS_MAX_AGE_S = 300
LOGIN_WINDOW_S = 60.0
INVALID_CREDENTIALS = "Incorrect username or password."
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_CSRF_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_JWT = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$")


class Accounts(Protocol):
    """What these routes need of the account service (``security/accounts.py``), which
    audits successful logins itself (``user.login``)."""

    async def authenticate(
        self,
        username: str,
        password: str,
        *,
        request_id: str | None = None,
        ip: str | None = None,
    ) -> UserRecord | None: ...


class AuditLog(Protocol):
    """The account service's ``audit`` (``AuditRepository``), when it has one."""

    async def append(
        self,
        actor: str,
        action: str,
        target_type: str,
        target_id: str | None = None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        ip: str | None = None,
    ) -> int: ...


class LoginThrottle:
    """At most ``limit`` login attempts per key (a client address, a user name) in any
    ``window_s`` seconds, counted in this process. ``clock``: monotonic seconds."""

    def __init__(
        self,
        limit: int,
        *,
        window_s: float = LOGIN_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if limit < 1:
            raise ValueError("a login throttle needs a limit of at least 1")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._attempts: dict[str, deque[float]] = {}

    def attempt(self, *keys: str) -> None:
        """Count one attempt against every key, or raise :class:`RateLimitError` (counting
        nothing) when any of them is at its limit."""
        now = self._clock()
        waits = [wait for key in keys if (wait := self._wait(key, now)) > 0]
        if waits:
            retry_after = max(1, math.ceil(max(waits)))
            raise RateLimitError(
                f"Too many login attempts; retry after {retry_after}s.",
                retry_after=retry_after,
                code="too_many_login_attempts",
            )
        for key in keys:
            self._attempts.setdefault(key, deque()).append(now)
        if len(self._attempts) > self._max_keys:
            self._sweep(now)

    def _wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        times = self._attempts.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._attempts[key]
            return 0.0
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.window_s - now

    def _sweep(self, now: float) -> None:
        for key in list(self._attempts):
            self._wait(key, now)
        while len(self._attempts) > self._max_keys:  # a flood of new keys: forget the oldest
            del self._attempts[next(iter(self._attempts))]


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description=f"Or send it in the `{REFRESH_COOKIE}` cookie.",
    )


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str


async def get_tokens(request: Request) -> TokenService:
    tokens = getattr(request.app.state, "tokens", None)
    if tokens is None:
        raise ServiceUnavailableError(
            "Dashboard sessions are not available on this server.", code="sessions_unavailable"
        )
    return cast(TokenService, tokens)


async def get_accounts(request: Request) -> Accounts:
    accounts = getattr(request.app.state, "accounts", None)
    if accounts is None:
        raise ServiceUnavailableError(
            "User accounts are not available on this server.", code="accounts_unavailable"
        )
    return cast(Accounts, accounts)


async def get_login_throttle(
    request: Request, tokens: Annotated[TokenService, Depends(get_tokens)]
) -> LoginThrottle:
    throttle = getattr(request.app.state, "login_throttle", None)
    if not isinstance(throttle, LoginThrottle):
        throttle = LoginThrottle(tokens.config.login_attempts_per_minute)
        request.app.state.login_throttle = throttle
    return throttle


Tokens = Annotated[TokenService, Depends(get_tokens)]


@router.post(
    "/api/v1/auth/login",
    response_model=TokenResponse,
    responses={401: {"description": "Wrong credentials"}, 429: {"description": "Throttled"}},
)
async def login(
    body: LoginRequest,
    request: Request,
    tokens: Tokens,
    accounts: Annotated[Accounts, Depends(get_accounts)],
    throttle: Annotated[LoginThrottle, Depends(get_login_throttle)],
) -> Response:
    """Start a dashboard session."""
    address = _client_address(request)
    throttle.attempt(f"address:{address}", f"user:{body.username.casefold()}")
    user = await accounts.authenticate(
        body.username, body.password, request_id=_request_id(request), ip=address
    )
    if user is None:
        await _audit(request, "anonymous", "user.login_failed", None, {"username": body.username})
        raise AuthenticationError(INVALID_CREDENTIALS, code="invalid_credentials")
    pair = await tokens.issue(user)
    response = JSONResponse(pair.to_dict(), headers=_NO_STORE)
    _set_cookies(response, pair, tokens.config, issue_csrf_token())
    return response


@router.post(
    "/api/v1/auth/refresh",
    response_model=TokenResponse,
    responses={401: {"description": "Invalid, expired or reused refresh token"}},
)
async def refresh(
    request: Request,
    tokens: Tokens,
    body: Annotated[RefreshRequest | None, Body()] = None,
) -> Response:
    """Spend the refresh token for a new access token and the next refresh token."""
    token = body.refresh_token if body is not None else None
    from_cookie = token is None
    if token is None:
        token = request.cookies.get(REFRESH_COOKIE) or None
    if token is None:
        raise AuthenticationError(
            f"Send the refresh token in the body or the {REFRESH_COOKIE} cookie.",
            code="missing_token",
        )
    try:
        pair = await tokens.refresh(token)
    except AuthenticationError as exc:
        if not from_cookie:
            raise
        # The dashboard's session is over: drop its cookies so it shows the login page.
        failed = error_response(exc)
        _clear_cookies(failed, tokens.config)
        return failed
    csrf = request.cookies.get(CSRF_COOKIE, "")
    response = JSONResponse(pair.to_dict(), headers=_NO_STORE)
    # Keep the CSRF token of the session: requests already in flight carry it.
    _set_cookies(response, pair, tokens.config, csrf if _CSRF_TOKEN.match(csrf) else None)
    return response


@router.post(
    "/api/v1/auth/logout",
    status_code=204,
    response_class=Response,
    responses={401: {"description": "No session to end"}},
)
async def logout(
    request: Request,
    tokens: Tokens,
    body: Annotated[RefreshRequest | None, Body()] = None,
) -> Response:
    """End the session: the access token is revoked, and so is its refresh-token family."""
    claims: AccessClaims | None = None
    access = _access_token(request)
    if access is not None:
        try:
            claims = await tokens.verify(access)
        except AuthenticationError as exc:
            # An expired (or already revoked) session can still be ended by its refresh token.
            if exc.code not in ("token_expired", "token_revoked"):
                raise
    refresh_token = body.refresh_token if body is not None else None
    if refresh_token is None:
        refresh_token = request.cookies.get(REFRESH_COOKIE) or None
    user_id = await tokens.logout(claims, refresh_token)
    actor = f"user:{claims.name}" if claims is not None else f"user:{user_id}"
    await _audit(request, actor, "user.logout", user_id, None)
    response = Response(status_code=204, headers=_NO_STORE)
    _clear_cookies(response, tokens.config)
    return response


@router.get("/.well-known/jwks.json", tags=["auth"])
async def jwks(tokens: Tokens) -> JSONResponse:
    """The public keys that verify access tokens (RFC 7517)."""
    return JSONResponse(
        await tokens.jwks(), headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_S}"}
    )


def _set_cookies(
    response: Response, pair: TokenPair, config: SecurityConfig, csrf: str | None
) -> None:
    secure = config.cookie_secure
    response.set_cookie(
        SESSION_COOKIE,
        pair.access_token,
        max_age=pair.expires_in,
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )
    response.set_cookie(
        REFRESH_COOKIE,
        pair.refresh_token,
        max_age=config.refresh_token_ttl_s,
        path=REFRESH_COOKIE_PATH,
        secure=secure,
        httponly=True,
        samesite="strict",
    )
    set_csrf_cookie(
        response,
        csrf or issue_csrf_token(),
        secure=secure,
        max_age_s=config.refresh_token_ttl_s,
    )


def _clear_cookies(response: Response, config: SecurityConfig) -> None:
    secure = config.cookie_secure
    for name, path, httponly in (
        (SESSION_COOKIE, "/", True),
        (REFRESH_COOKIE, REFRESH_COOKIE_PATH, True),
        (CSRF_COOKIE, "/", False),
    ):
        response.delete_cookie(name, path=path, secure=secure, httponly=httponly, samesite="strict")


def _access_token(request: Request) -> str | None:
    """The session's access token: a JWT in ``Authorization: Bearer``, else the cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() == "bearer" and _JWT.match(credential):
        return credential
    return request.cookies.get(SESSION_COOKIE) or None


def _client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


async def _audit(
    request: Request,
    actor: str,
    action: str,
    target_id: str | None,
    after: dict[str, Any] | None,
) -> None:
    """Record a failed login or a logout in the account service's audit log, if it has one
    (``authenticate`` records successful logins itself)."""
    audit = getattr(getattr(request.app.state, "accounts", None), "audit", None)
    if audit is None or not callable(getattr(audit, "append", None)):
        return
    await cast(AuditLog, audit).append(
        actor,
        action,
        "user",
        target_id,
        None,
        after,
        _request_id(request),
        _client_address(request),
    )


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None
