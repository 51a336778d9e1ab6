"""Dashboard sessions: access tokens, rotating refresh tokens, logout.

Access tokens are short-lived RS256 JWTs (their format is in ``access_tokens.py``), signed
with keys that every replica shares and that rotate on a schedule (``signing_keys.py``, which
also builds the key set ``/.well-known/jwks.json`` publishes). This module is the session
logic on top of both.

Refresh tokens are opaque random strings, stored only as a keyed hash. A login starts a
*family*; each refresh spends the presented token (a compare-and-set in the database, so two
concurrent refreshes of one token cannot both succeed) and issues the next one in the family.
A token shown again after it was spent or revoked means it leaked: the whole family is revoked.

Logout puts the access token's ``jti`` on a denylist until the token expires and revokes its
family. Verifying caches public keys and denylist answers briefly, so a logout on one replica
is seen by the others within ``denylist_cache_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from helixflow.errors import AuthenticationError, NotFoundError, ServiceUnavailableError
from helixflow.security.access_tokens import (
    AccessClaims,
    decode_access_token,
    encode_access_token,
    invalid_token,
    signing_kid,
)
from helixflow.security.identity import UserRecord
from helixflow.security.secret import derive
from helixflow.security.signing_keys import SIGNING_KEY_PURPOSE, Clock, SigningKeys
from helixflow.security_config import SecurityConfig
from helixflow.store.database import CONNECTION_ERRORS, Database
from helixflow.store.repositories.sessions import (
    RefreshTokenRepository,
    RefreshTokenRow,
    RevokedTokenRepository,
)
from helixflow.store.schema import utcnow

__all__ = [
    "REFRESH_HASH_PURPOSE",
    "SIGNING_KEY_PURPOSE",
    "AccessClaims",
    "Clock",
    "TokenPair",
    "TokenService",
    "UserDirectory",
]

log = logging.getLogger(__name__)

MAX_LEEWAY_S = 30
MAX_REFRESH_TOKEN_CHARS = 256
REFRESH_TOKEN_PREFIX = "hfr_"
"""Recognizable in logs and by secret scanners."""
REFRESH_HASH_PURPOSE = "refresh-token-hash"


class UserDirectory(Protocol):
    """Where a refresh finds the user's current name, role and state
    (``security/accounts.py``'s ``AccountService``: an unknown user is None or a
    :class:`NotFoundError`)."""

    async def get_user(self, user_id: str) -> UserRecord | None: ...


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What login and refresh hand out."""

    access_token: str
    refresh_token: str
    expires_in: int
    """Seconds the access token is valid for."""
    claims: AccessClaims
    refresh_expires_at: datetime
    token_type: str = "bearer"

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of the login and refresh answers."""
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
        }


class TokenService:
    """Issues, verifies, refreshes and revokes dashboard sessions; publishes the JWKS.

    ``users`` finds a user again at refresh time (their role may have changed; a deactivated
    user gets no new token). ``clock`` gives aware UTC datetimes (tests inject a fake one).
    ``leeway_s`` (0-30) is how long after ``exp`` a token is still accepted, for clock skew
    between replicas. ``key_cache_s``: how long the public keys and the current signing key
    are trusted before the database is asked again. ``denylist_cache_s``: how long a "not
    revoked" answer is kept (a logout on another replica is seen after at most that long).
    """

    def __init__(
        self,
        database: Database,
        secret: bytes,
        config: SecurityConfig,
        *,
        users: UserDirectory,
        clock: Clock = utcnow,
        leeway_s: int = 10,
        key_cache_s: float = 60.0,
        denylist_cache_s: float = 5.0,
        denylist_cache_size: int = 10_000,
        maintenance_interval_s: float = 60.0,
    ) -> None:
        if not 0 <= leeway_s <= MAX_LEEWAY_S:
            raise ValueError(f"leeway_s must be between 0 and {MAX_LEEWAY_S}, not {leeway_s}")
        self.config = config
        self._users = users
        self._clock = clock
        self._leeway = timedelta(seconds=leeway_s)
        self._denylist_cache = timedelta(seconds=denylist_cache_s)
        self._denylist_cache_size = denylist_cache_size
        self._maintenance_interval_s = maintenance_interval_s
        self._keys = SigningKeys(
            database,
            secret,
            config,
            clock=clock,
            leeway=self._leeway,
            key_cache=timedelta(seconds=key_cache_s),
        )
        self._refresh_tokens = RefreshTokenRepository(database)
        self._revoked = RevokedTokenRepository(database)
        self._refresh_hash_key = derive(secret, REFRESH_HASH_PURPOSE)
        self._denied: OrderedDict[str, tuple[bool, datetime]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Make sure a signing key exists (and can be decrypted with this secret: raises
        :class:`ConfigurationError` otherwise), then rotate and prune periodically."""
        await self.maintain()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="session-keys")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._maintenance_interval_s)
            try:
                await self.maintain()
            except CONNECTION_ERRORS as exc:
                log.warning("sessions: database unreachable, will retry: %s", exc)
            except Exception:
                log.exception("sessions: key maintenance failed, will retry")

    async def maintain(self) -> None:
        """One pass of the periodic work: rotate the signing key when due, reload the
        verifying keys, delete expired keys, denylist entries and refresh tokens."""
        now = self._clock()
        await self._keys.refresh(now)
        keys = await self._keys.delete_expired(now)
        denied = await self._revoked.prune(now)
        # Spent tokens are kept one more lifetime, so that showing one again is still
        # recognized as reuse for a while after it expired.
        refresh = await self._refresh_tokens.delete_expired(
            now - timedelta(seconds=self.config.refresh_token_ttl_s)
        )
        if keys or denied or refresh:
            log.info(
                "sessions: deleted %d expired signing key(s), %d denylist entr(ies), "
                "%d refresh token(s)",
                keys,
                denied,
                refresh,
            )

    # --- issuing -----------------------------------------------------------------------------

    async def issue(self, user: UserRecord) -> TokenPair:
        """A new session for ``user`` (after a successful login): an access token and the
        first refresh token of a new family."""
        if not user.active:
            raise AuthenticationError("This user is deactivated.", code="inactive_user")
        now = self._clock()
        family = uuid.uuid4().hex
        access, claims = await self._access_token(user, family, now)
        refresh, row = self._new_refresh_token(user.id, family, now)
        await self._refresh_tokens.add(row)
        return self._pair(access, claims, refresh, row)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Spend ``refresh_token`` and issue the next one of its family with a new access
        token. A token spent or revoked already revokes the whole family
        (``refresh_token_reused``)."""
        if not _plausible_refresh_token(refresh_token):
            raise AuthenticationError("The refresh token is not valid.", code="invalid_token")
        now = self._clock()
        row = await self._refresh_tokens.get_by_hash(self._hash_refresh_token(refresh_token))
        if row is None:
            raise AuthenticationError("The refresh token is not valid.", code="invalid_token")
        if row.used_at is not None or row.revoked_at is not None:
            await self._reused(row, now)
        if now >= row.expires_at:
            raise AuthenticationError(
                "The refresh token has expired; log in again.", code="token_expired"
            )
        try:
            user = await self._users.get_user(row.user_id)
        except NotFoundError:  # AccountService raises where the protocol answers None
            user = None
        if user is None or not user.active:
            await self._refresh_tokens.revoke_family(row.family_id, now)
            raise AuthenticationError(
                "This user no longer exists or is deactivated.", code="inactive_user"
            )
        # Sign first: a token minted for a refresh that then loses the race is never seen.
        access, claims = await self._access_token(user, row.family_id, now)
        plain, successor = self._new_refresh_token(user.id, row.family_id, now)
        if not await self._refresh_tokens.rotate(row.id, successor, now):
            await self._reused(row, now)
        return self._pair(access, claims, plain, successor)

    async def _reused(self, row: RefreshTokenRow, now: datetime) -> None:
        revoked = await self._refresh_tokens.revoke_family(row.family_id, now)
        log.warning(
            "sessions: refresh token reused for user %s; revoked its session (%d token(s))",
            row.user_id,
            revoked,
        )
        raise AuthenticationError(
            "This refresh token was already used; the session is revoked. Log in again.",
            code="refresh_token_reused",
        )

    async def logout(self, claims: AccessClaims | None, refresh_token: str | None) -> str | None:
        """End a session: the access token's ``jti`` is denied until it expires and its
        family revoked; ``refresh_token``'s family too (when it is the same user's). Returns
        the user's id; 401 when neither names a session."""
        now = self._clock()
        user_id: str | None = None
        if claims is not None:
            user_id = claims.sub
            await self._revoked.add(claims.jti, claims.exp + self._leeway)
            self._remember_denied(claims.jti, True, now)
            if claims.sid:
                await self._refresh_tokens.revoke_family(claims.sid, now)
        if refresh_token is not None and _plausible_refresh_token(refresh_token):
            row = await self._refresh_tokens.get_by_hash(self._hash_refresh_token(refresh_token))
            if row is not None and (user_id is None or row.user_id == user_id):
                user_id = row.user_id
                await self._refresh_tokens.revoke_family(row.family_id, now)
        if user_id is None:
            raise AuthenticationError(
                "Nothing to log out: the session's tokens are missing or not valid.",
                code="invalid_token",
            )
        return user_id

    async def revoke_user(self, user_id: str) -> int:
        """Revoke every refresh token of a user (password change, deactivation); their
        access tokens run out within ``access_token_ttl_s``. Returns how many."""
        return await self._refresh_tokens.revoke_user(user_id, self._clock())

    def _pair(
        self, access: str, claims: AccessClaims, refresh: str, row: RefreshTokenRow
    ) -> TokenPair:
        return TokenPair(
            access_token=access,
            refresh_token=refresh,
            expires_in=self.config.access_token_ttl_s,
            claims=claims,
            refresh_expires_at=row.expires_at,
        )

    async def _access_token(
        self, user: UserRecord, family: str, now: datetime
    ) -> tuple[str, AccessClaims]:
        signer = await self._keys.signer(now)
        return encode_access_token(user, family, signer, now, self.config.access_token_ttl_s)

    def _new_refresh_token(
        self, user_id: str, family: str, now: datetime
    ) -> tuple[str, RefreshTokenRow]:
        plain = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = RefreshTokenRow(
            id=uuid.uuid4().hex,
            family_id=family,
            user_id=user_id,
            token_hash=self._hash_refresh_token(plain),
            issued_at=now,
            expires_at=now + timedelta(seconds=self.config.refresh_token_ttl_s),
        )
        return plain, row

    def _hash_refresh_token(self, token: str) -> str:
        return hmac.new(self._refresh_hash_key, token.encode(), hashlib.sha256).hexdigest()

    # --- verifying ---------------------------------------------------------------------------

    async def verify(self, token: str) -> AccessClaims:
        """The claims of a valid access token. Raises :class:`AuthenticationError` with code
        ``invalid_token`` (malformed, wrong algorithm, unknown key, bad signature, wrong
        claims), ``token_expired`` or ``token_revoked`` (logged out); a
        :class:`ServiceUnavailableError` (``sessions_unavailable``) when the database is
        needed and unreachable."""
        kid = signing_kid(token)
        now = self._clock()
        try:
            verifier = await self._keys.verifier(kid, now)
        except CONNECTION_ERRORS as exc:
            raise _unavailable(exc) from exc
        if verifier is None:
            raise invalid_token("The access token was signed by an unknown or expired key.")
        claims = decode_access_token(token, verifier.public_key, kid)
        if now >= claims.exp + self._leeway:
            raise AuthenticationError(
                "The access token has expired; refresh the session.", code="token_expired"
            )
        if claims.iat > now + self._leeway:
            raise invalid_token("The access token was issued in the future.")
        try:
            denied = await self._is_denied(claims.jti, now)
        except CONNECTION_ERRORS as exc:
            raise _unavailable(exc) from exc
        if denied:
            raise AuthenticationError(
                "The access token was revoked (logged out).", code="token_revoked"
            )
        return claims

    async def _is_denied(self, jti: str, now: datetime) -> bool:
        cached = self._denied.get(jti)
        if cached is not None:
            denied, checked_at = cached
            if denied or checked_at <= now < checked_at + self._denylist_cache:
                return denied
        denied = await self._revoked.contains(jti)
        self._remember_denied(jti, denied, now)
        return denied

    def _remember_denied(self, jti: str, denied: bool, now: datetime) -> None:
        self._denied[jti] = (denied, now)
        self._denied.move_to_end(jti)
        while len(self._denied) > self._denylist_cache_size:
            self._denied.popitem(last=False)

    async def jwks(self) -> dict[str, Any]:
        """Every key that still verifies, as a JSON Web Key Set."""
        return await self._keys.jwks()

    # --- signing keys ------------------------------------------------------------------------

    async def rotate(self) -> str:
        """Retire the current signing key now and start a new one; returns its kid (for an
        operator who suspects a key leaked, or lost the secret the keys were encrypted
        with)."""
        return await self._keys.rotate()


def _plausible_refresh_token(token: object) -> bool:
    return (
        isinstance(token, str)
        and token.startswith(REFRESH_TOKEN_PREFIX)
        and len(token) <= MAX_REFRESH_TOKEN_CHARS
    )


def _unavailable(exc: BaseException) -> ServiceUnavailableError:
    """The database is away: refuse (fail closed) with a 503 rather than a 500."""
    log.warning("sessions: cannot verify a token, database unreachable: %s", exc)
    return ServiceUnavailableError(
        "Sessions cannot be checked right now; retry shortly.", code="sessions_unavailable"
    )
