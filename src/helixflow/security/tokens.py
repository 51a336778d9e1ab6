"""Dashboard sessions: RS256 access tokens, rotating refresh tokens, logout, JWKS.

Access tokens are short-lived JWTs signed with RS256. Signing keys are generated on demand
(2048-bit RSA), stored in ``signing_keys`` with the private half encrypted (AES-GCM under a key
derived from the server secret), so every replica signs with the same key and verifies the
others' tokens. A new key (a new ``kid``) replaces the current one every
``security.signing_key_rotation_s``; the old one stops signing but keeps verifying until the
last token it can have signed has expired, and ``/.well-known/jwks.json`` publishes it until
then.

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
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from helixflow.errors import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    ServiceUnavailableError,
)
from helixflow.security.identity import ROLES, Role, UserRecord
from helixflow.security.secret import derive
from helixflow.security_config import SecurityConfig
from helixflow.store.database import CONNECTION_ERRORS, Database
from helixflow.store.repositories.sessions import (
    RefreshTokenRepository,
    RefreshTokenRow,
    RevokedTokenRepository,
    SigningKeyRepository,
    SigningKeyRow,
)
from helixflow.store.schema import utcnow

log = logging.getLogger(__name__)

ISSUER = "helixflow"
ALGORITHM = "RS256"
RSA_KEY_BITS = 2048
TOKEN_TYPE = "access"
MAX_LEEWAY_S = 30
MAX_ACCESS_TOKEN_CHARS = 8192
MAX_REFRESH_TOKEN_CHARS = 256
REFRESH_TOKEN_PREFIX = "hfr_"
"""Recognizable in logs and by secret scanners."""
UNKNOWN_KID_RELOAD_S = 1.0
"""A token naming a kid not in the cache reloads the keys at most this often: a flood of
made-up kids costs the database one query a second."""
SIGNING_KEY_PURPOSE = "jwt-signing-keys"
REFRESH_HASH_PURPOSE = "refresh-token-hash"
_KID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENCRYPTION_VERSION = "v1"
_NONCE_BYTES = 12
_REQUIRED_CLAIMS = ["iss", "sub", "jti", "iat", "exp"]

Clock = Callable[[], datetime]


class UserDirectory(Protocol):
    """Where a refresh finds the user's current name, role and state
    (``security/accounts.py``'s ``AccountService``: an unknown user is None or a
    :class:`NotFoundError`)."""

    async def get_user(self, user_id: str) -> UserRecord | None: ...


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """A verified access token's claims."""

    sub: str
    """The user's id."""
    name: str
    """The user's name when the token was issued."""
    role: Role
    """The user's role when the token was issued."""
    jti: str
    iat: datetime
    exp: datetime
    sid: str | None
    """The session: the refresh-token family the token belongs to (logout revokes it)."""
    kid: str

    @property
    def user_id(self) -> str:
        return self.sub


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


@dataclass(frozen=True, slots=True)
class _Signer:
    kid: str
    private_key: rsa.RSAPrivateKey
    created_at: datetime
    checked_at: datetime
    """When the database last said this is the newest active key."""


@dataclass(frozen=True, slots=True)
class _Verifier:
    public_key: rsa.RSAPublicKey
    expires_at: datetime | None

    def valid_at(self, moment: datetime) -> bool:
        return self.expires_at is None or self.expires_at > moment


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
        self._key_cache = timedelta(seconds=key_cache_s)
        self._denylist_cache = timedelta(seconds=denylist_cache_s)
        self._denylist_cache_size = denylist_cache_size
        self._maintenance_interval_s = maintenance_interval_s
        self._keys = SigningKeyRepository(database)
        self._refresh_tokens = RefreshTokenRepository(database)
        self._revoked = RevokedTokenRepository(database)
        self._aead = AESGCM(derive(secret, SIGNING_KEY_PURPOSE))
        self._refresh_hash_key = derive(secret, REFRESH_HASH_PURPOSE)
        self._signer: _Signer | None = None
        self._signer_lock = asyncio.Lock()
        self._verifiers: dict[str, _Verifier] = {}
        self._verifiers_loaded_at: datetime | None = None
        self._verifiers_lock = asyncio.Lock()
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
        await self._current_signer(now, force=True)
        await self._reload_verifiers(now)
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
        signer = await self._signing_key(now)
        issued = int(now.timestamp())
        expires = issued + self.config.access_token_ttl_s
        jti = secrets.token_urlsafe(16)
        payload = {
            "iss": ISSUER,
            "sub": user.id,
            "name": user.username,
            "role": user.role,
            "jti": jti,
            "iat": issued,
            "exp": expires,
            "typ": TOKEN_TYPE,
            "sid": family,
        }
        token = jwt.encode(
            payload, signer.private_key, algorithm=ALGORITHM, headers={"kid": signer.kid}
        )
        claims = AccessClaims(
            sub=user.id,
            name=user.username,
            role=user.role,
            jti=jti,
            iat=_from_timestamp(issued),
            exp=_from_timestamp(expires),
            sid=family,
            kid=signer.kid,
        )
        return token, claims

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
        if not isinstance(token, str) or not token or len(token) > MAX_ACCESS_TOKEN_CHARS:
            raise _invalid("The access token is malformed.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("The access token is malformed.") from None
        if header.get("alg") != ALGORITHM:
            raise _invalid(f"The access token must be signed with {ALGORITHM}.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID.match(kid):
            raise _invalid("The access token names no valid signing key.")
        now = self._clock()
        try:
            verifier = await self._verifier(kid, now)
        except CONNECTION_ERRORS as exc:
            raise _unavailable(exc) from exc
        if verifier is None:
            raise _invalid("The access token was signed by an unknown or expired key.")
        try:
            payload = jwt.decode(
                token,
                verifier.public_key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                # exp and iat are checked below, against the injected clock.
                options={
                    "require": _REQUIRED_CLAIMS,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError:
            raise _invalid("The access token's signature or claims are not valid.") from None
        claims = _claims(payload, kid)
        if now >= claims.exp + self._leeway:
            raise AuthenticationError(
                "The access token has expired; refresh the session.", code="token_expired"
            )
        if claims.iat > now + self._leeway:
            raise _invalid("The access token was issued in the future.")
        try:
            denied = await self._is_denied(claims.jti, now)
        except CONNECTION_ERRORS as exc:
            raise _unavailable(exc) from exc
        if denied:
            raise AuthenticationError(
                "The access token was revoked (logged out).", code="token_revoked"
            )
        return claims

    async def _verifier(self, kid: str, now: datetime) -> _Verifier | None:
        verifier = self._verifiers.get(kid)
        if self._must_reload(verifier, now):
            async with self._verifiers_lock:  # one reload at a time; the others wait for it
                verifier = self._verifiers.get(kid)
                if self._must_reload(verifier, now):
                    await self._reload_verifiers(now)
                    verifier = self._verifiers.get(kid)
        if verifier is None or not verifier.valid_at(now):
            return None
        return verifier

    def _must_reload(self, verifier: _Verifier | None, now: datetime) -> bool:
        loaded = self._verifiers_loaded_at
        if loaded is None or now >= loaded + self._key_cache or now < loaded:
            return True
        return verifier is None and now >= loaded + timedelta(seconds=UNKNOWN_KID_RELOAD_S)

    async def _reload_verifiers(self, now: datetime) -> None:
        rows = await self._keys.verifying(now)
        fresh: dict[str, _Verifier] = {}
        for row in rows:
            cached = self._verifiers.get(row.kid)
            public_key = cached.public_key if cached is not None else _load_public(row)
            fresh[row.kid] = _Verifier(public_key, row.expires_at)
        self._verifiers = fresh
        self._verifiers_loaded_at = now

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
        now = self._clock()
        loaded = self._verifiers_loaded_at
        if loaded is None or now >= loaded + self._key_cache or now < loaded:
            await self._reload_verifiers(now)
        return {
            "keys": [
                _jwk(kid, verifier.public_key)
                for kid, verifier in self._verifiers.items()
                if verifier.valid_at(now)
            ]
        }

    # --- signing keys ------------------------------------------------------------------------

    async def rotate(self) -> str:
        """Retire the current signing key now and start a new one; returns its kid (for an
        operator who suspects a key leaked, or lost the secret the keys were encrypted
        with)."""
        async with self._signer_lock:
            now = self._clock()
            for _ in range(3):
                active = await self._keys.active()
                signer = await self._replace(active, now)
                if signer is not None:
                    return signer.kid
            raise ServiceUnavailableError("Could not rotate the signing key; try again.")

    async def _signing_key(self, now: datetime) -> _Signer:
        try:
            return await self._current_signer(now, force=False)
        except ConfigurationError as exc:
            log.error("sessions: %s", exc)
            raise ServiceUnavailableError(
                "Sessions are unavailable: the signing key cannot be used (see the server log).",
                code="signing_key_unavailable",
            ) from exc

    def _signer_fresh(self, signer: _Signer | None, now: datetime) -> bool:
        rotation = timedelta(seconds=self.config.signing_key_rotation_s)
        return (
            signer is not None
            and now < signer.created_at + rotation
            and signer.checked_at <= now < signer.checked_at + self._key_cache
        )

    async def _current_signer(self, now: datetime, *, force: bool) -> _Signer:
        if not force and self._signer_fresh(self._signer, now):
            return cast(_Signer, self._signer)
        async with self._signer_lock:
            if not force and self._signer_fresh(self._signer, now):
                return cast(_Signer, self._signer)
            rotation = timedelta(seconds=self.config.signing_key_rotation_s)
            for _ in range(3):
                active = await self._keys.active()
                newest = active[0] if active else None
                if newest is not None and now < newest.created_at + rotation:
                    signer = _Signer(newest.kid, self._decrypt(newest), newest.created_at, now)
                    self._signer = signer
                    self._remember_verifier(newest)
                    return signer
                replaced = await self._replace(active, now)
                if replaced is not None:
                    return replaced
                # Another replica rotated first: use its key.
            raise ServiceUnavailableError(
                "Could not settle on a signing key; try again.", code="signing_key_unavailable"
            )

    async def _replace(self, active: list[SigningKeyRow], now: datetime) -> _Signer | None:
        """Add a new key retiring ``active``; None when another replica changed them first.
        Must hold ``_signer_lock``."""
        row, private_key = await self._generate(now)
        # The retired key verifies until the last token it may have signed has expired: a
        # replica that has not noticed the rotation yet signs with it for up to key_cache_s.
        until = now + timedelta(seconds=self.config.access_token_ttl_s) + self._leeway
        until += self._key_cache
        if not await self._keys.rotate(row, [k.kid for k in active], now, until):
            return None
        log.info(
            "sessions: new signing key %s%s",
            row.kid,
            f" (retired {', '.join(k.kid for k in active)})" if active else "",
        )
        signer = _Signer(row.kid, private_key, row.created_at, now)
        self._signer = signer
        self._remember_verifier(row)
        for old in active:
            cached = self._verifiers.get(old.kid)
            if cached is not None:
                self._verifiers[old.kid] = _Verifier(cached.public_key, until)
        return signer

    def _remember_verifier(self, row: SigningKeyRow) -> None:
        if row.kid not in self._verifiers:
            self._verifiers[row.kid] = _Verifier(_load_public(row), row.expires_at)

    async def _generate(self, now: datetime) -> tuple[SigningKeyRow, rsa.RSAPrivateKey]:
        kid = secrets.token_urlsafe(16)
        private_key, private_pem, public_pem = await asyncio.to_thread(_new_rsa_key)
        row = SigningKeyRow(
            kid=kid,
            algorithm=ALGORITHM,
            public_pem=public_pem.decode(),
            private_encrypted=self._encrypt(kid, private_pem),
            created_at=now,
        )
        return row, private_key

    def _encrypt(self, kid: str, private_pem: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, private_pem, kid.encode())
        return f"{_ENCRYPTION_VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def _decrypt(self, row: SigningKeyRow) -> rsa.RSAPrivateKey:
        version, _, body = row.private_encrypted.partition(".")
        try:
            if version != _ENCRYPTION_VERSION:
                raise ValueError(f"unknown encryption version {version!r}")
            sealed = base64.urlsafe_b64decode(body.encode())
            pem = self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], row.kid.encode())
            key = serialization.load_pem_private_key(pem, password=None)
        except (InvalidTag, ValueError) as exc:
            raise ConfigurationError(
                f"signing key {row.kid} cannot be decrypted with this server's secret: every "
                "replica must share the same secret (security.secret_env / secret_file). "
                "Restore it, or start new keys with TokenService.rotate() (sessions signed "
                "by the old key stay valid until they expire)."
            ) from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigurationError(f"signing key {row.kid} is not an RSA key")
        return key


def _new_rsa_key() -> tuple[rsa.RSAPrivateKey, bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, private_pem, public_pem


def _load_public(row: SigningKeyRow) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(row.public_pem.encode())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigurationError(f"signing key {row.kid} is not an RSA key")
    return key


def _jwk(kid: str, key: rsa.RSAPublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": ALGORITHM,
        "n": _b64_uint(numbers.n),
        "e": _b64_uint(numbers.e),
    }


def _b64_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(payload: dict[str, Any], kid: str) -> AccessClaims:
    sub, name, role, jti = (payload.get(k) for k in ("sub", "name", "role", "jti"))
    iat, exp, sid = payload.get("iat"), payload.get("exp"), payload.get("sid")
    if (
        payload.get("typ") != TOKEN_TYPE
        or not isinstance(sub, str)
        or not sub
        or not isinstance(name, str)
        or role not in ROLES
        or not isinstance(jti, str)
        or not jti
        or len(jti) > 64
        or not _is_int(iat)
        or not _is_int(exp)
        or not (sid is None or isinstance(sid, str))
    ):
        raise _invalid("The access token's claims are not valid.")
    return AccessClaims(
        sub=sub,
        name=name,
        role=cast(Role, role),
        jti=jti,
        iat=_from_timestamp(cast(int, iat)),
        exp=_from_timestamp(cast(int, exp)),
        sid=sid,
        kid=kid,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**40


def _from_timestamp(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


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


def _invalid(message: str) -> AuthenticationError:
    return AuthenticationError(message, code="invalid_token")
