"""The RSA keys that sign dashboard access tokens: generated, stored encrypted, rotated, published.

Signing keys are generated on demand (2048-bit RSA) and stored in ``signing_keys`` with the
private half encrypted (AES-GCM under a key derived from the server secret, the ``kid`` as
associated data), so every replica signs with the same key and verifies the others' tokens.
A new key (a new ``kid``) replaces the current one every ``security.signing_key_rotation_s``;
the old one stops signing but keeps verifying until the last token it can have signed has
expired, and ``/.well-known/jwks.json`` publishes it until then.

This is kept apart from :mod:`helixflow.security.tokens` because it is a cache over the
database with its own locking and rotation race (replicas rotating at once settle on one key
through a compare-and-set), which the session logic there need not know about: it asks for
the current :class:`Signer` and for the :class:`Verifier` of a ``kid``, nothing more.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from helixflow.errors import ConfigurationError, ServiceUnavailableError
from helixflow.security.secret import derive
from helixflow.security_config import SecurityConfig
from helixflow.store.database import Database
from helixflow.store.repositories.sessions import SigningKeyRepository, SigningKeyRow

log = logging.getLogger(__name__)

ALGORITHM = "RS256"
RSA_KEY_BITS = 2048
UNKNOWN_KID_RELOAD_S = 1.0
"""A token naming a kid not in the cache reloads the keys at most this often: a flood of
made-up kids costs the database one query a second."""
SIGNING_KEY_PURPOSE = "jwt-signing-keys"
"""The :func:`helixflow.security.secret.derive` purpose of the key encrypting private keys."""
_ENCRYPTION_VERSION = "v1"
_NONCE_BYTES = 12

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Signer:
    """The key new access tokens are signed with."""

    kid: str
    private_key: rsa.RSAPrivateKey
    created_at: datetime
    checked_at: datetime
    """When the database last said this is the newest active key."""


@dataclass(frozen=True, slots=True)
class Verifier:
    """A public key that still verifies tokens, until ``expires_at`` (None: while active)."""

    public_key: rsa.RSAPublicKey
    expires_at: datetime | None

    def valid_at(self, moment: datetime) -> bool:
        return self.expires_at is None or self.expires_at > moment


class SigningKeys:
    """The current signing key and the verifying keys, cached over ``signing_keys``.

    ``leeway`` and the access-token TTL in ``config`` decide how long a retired key keeps
    verifying; ``key_cache`` is how long the cached keys are trusted before the database is
    asked again (a replica may sign with a key retired elsewhere for that long).
    """

    def __init__(
        self,
        database: Database,
        secret: bytes,
        config: SecurityConfig,
        *,
        clock: Clock,
        leeway: timedelta,
        key_cache: timedelta,
    ) -> None:
        self._config = config
        self._clock = clock
        self._leeway = leeway
        self._key_cache = key_cache
        self._keys = SigningKeyRepository(database)
        self._aead = AESGCM(derive(secret, SIGNING_KEY_PURPOSE))
        self._signer: Signer | None = None
        self._signer_lock = asyncio.Lock()
        self._verifiers: dict[str, Verifier] = {}
        self._verifiers_loaded_at: datetime | None = None
        self._verifiers_lock = asyncio.Lock()

    # --- maintenance -------------------------------------------------------------------------

    async def refresh(self, now: datetime) -> None:
        """Rotate the signing key when due (raises :class:`ConfigurationError` when the
        stored key cannot be decrypted with this secret) and reload the verifying keys."""
        await self._current_signer(now, force=True)
        await self._reload_verifiers(now)

    async def delete_expired(self, now: datetime) -> int:
        """Delete the retired keys that verify nothing any more; returns how many."""
        return await self._keys.delete_expired(now)

    async def rotate(self) -> str:
        """Retire the current signing key now and start a new one; returns its kid."""
        async with self._signer_lock:
            now = self._clock()
            for _ in range(3):
                active = await self._keys.active()
                signer = await self._replace(active, now)
                if signer is not None:
                    return signer.kid
            raise ServiceUnavailableError("Could not rotate the signing key; try again.")

    # --- signing -----------------------------------------------------------------------------

    async def signer(self, now: datetime) -> Signer:
        """The key to sign with now; a 503 (``signing_key_unavailable``) when the stored key
        cannot be used (the reason goes to the log, not to the client)."""
        try:
            return await self._current_signer(now, force=False)
        except ConfigurationError as exc:
            log.error("sessions: %s", exc)
            raise ServiceUnavailableError(
                "Sessions are unavailable: the signing key cannot be used (see the server log).",
                code="signing_key_unavailable",
            ) from exc

    def _signer_fresh(self, signer: Signer | None, now: datetime) -> bool:
        rotation = timedelta(seconds=self._config.signing_key_rotation_s)
        return (
            signer is not None
            and now < signer.created_at + rotation
            and signer.checked_at <= now < signer.checked_at + self._key_cache
        )

    async def _current_signer(self, now: datetime, *, force: bool) -> Signer:
        if not force and self._signer_fresh(self._signer, now):
            return cast(Signer, self._signer)
        async with self._signer_lock:
            if not force and self._signer_fresh(self._signer, now):
                return cast(Signer, self._signer)
            rotation = timedelta(seconds=self._config.signing_key_rotation_s)
            for _ in range(3):
                active = await self._keys.active()
                newest = active[0] if active else None
                if newest is not None and now < newest.created_at + rotation:
                    signer = Signer(newest.kid, self._decrypt(newest), newest.created_at, now)
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

    async def _replace(self, active: list[SigningKeyRow], now: datetime) -> Signer | None:
        """Add a new key retiring ``active``; None when another replica changed them first.
        Must hold ``_signer_lock``."""
        row, private_key = await self._generate(now)
        # The retired key verifies until the last token it may have signed has expired: a
        # replica that has not noticed the rotation yet signs with it for up to key_cache_s.
        until = now + timedelta(seconds=self._config.access_token_ttl_s) + self._leeway
        until += self._key_cache
        if not await self._keys.rotate(row, [k.kid for k in active], now, until):
            return None
        log.info(
            "sessions: new signing key %s%s",
            row.kid,
            f" (retired {', '.join(k.kid for k in active)})" if active else "",
        )
        signer = Signer(row.kid, private_key, row.created_at, now)
        self._signer = signer
        self._remember_verifier(row)
        for old in active:
            cached = self._verifiers.get(old.kid)
            if cached is not None:
                self._verifiers[old.kid] = Verifier(cached.public_key, until)
        return signer

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

    # --- verifying ---------------------------------------------------------------------------

    async def verifier(self, kid: str, now: datetime) -> Verifier | None:
        """The key that verifies tokens signed by ``kid``; None when it is unknown or
        expired. An unknown kid reloads the keys (at most every
        :data:`UNKNOWN_KID_RELOAD_S`): another replica may have rotated."""
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

    def _must_reload(self, verifier: Verifier | None, now: datetime) -> bool:
        loaded = self._verifiers_loaded_at
        if loaded is None or now >= loaded + self._key_cache or now < loaded:
            return True
        return verifier is None and now >= loaded + timedelta(seconds=UNKNOWN_KID_RELOAD_S)

    async def _reload_verifiers(self, now: datetime) -> None:
        rows = await self._keys.verifying(now)
        fresh: dict[str, Verifier] = {}
        for row in rows:
            cached = self._verifiers.get(row.kid)
            public_key = cached.public_key if cached is not None else _load_public(row)
            fresh[row.kid] = Verifier(public_key, row.expires_at)
        self._verifiers = fresh
        self._verifiers_loaded_at = now

    def _remember_verifier(self, row: SigningKeyRow) -> None:
        if row.kid not in self._verifiers:
            self._verifiers[row.kid] = Verifier(_load_public(row), row.expires_at)

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
