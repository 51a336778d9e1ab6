"""Dashboard sessions (``security/tokens.py``) over a real database (SQLite and PostgreSQL):
RS256 access tokens, signing-key rotation, refresh rotation with reuse detection, logout."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from helixflow.errors import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    ServiceUnavailableError,
)
from helixflow.security.identity import UserRecord
from helixflow.security.secret import derive
from helixflow.security.tokens import (
    SIGNING_KEY_PURPOSE,
    AccessClaims,
    TokenPair,
    TokenService,
)
from helixflow.security_config import SecurityConfig
from helixflow.store.database import Database
from helixflow.store.repositories.sessions import (
    RefreshTokenRepository,
    RefreshTokenRow,
    RevokedTokenRepository,
    SigningKeyRepository,
)
from tests.security.conftest import closed_port
from tests.security.factories import START, WallClock, store_users

SECRET = b"test-secret-0123456789abcdef-0123"
TTL = 900
REFRESH_TTL = 3600
ROTATION = 7200
LEEWAY = 10
KEY_CACHE = 60
DENYLIST_CACHE = 5
CONFIG = SecurityConfig(
    access_token_ttl_s=TTL,
    refresh_token_ttl_s=REFRESH_TTL,
    signing_key_rotation_s=ROTATION,
)
ALICE = UserRecord(id="usr_alice", username="alice", role="developer")
BOB = UserRecord(id="usr_bob", username="bob", role="viewer")


@dataclass
class Directory:
    """Stands in for AccountService.get_user: the users' current records."""

    users: dict[str, UserRecord] = field(default_factory=dict)
    raise_not_found: bool = False

    async def get_user(self, user_id: str) -> UserRecord | None:
        if self.raise_not_found:
            raise NotFoundError(f"No user '{user_id}'.")
        return self.users.get(user_id)


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture
async def directory(database: Database) -> Directory:
    await store_users(database, ALICE, BOB)
    return Directory({ALICE.id: ALICE, BOB.id: BOB})


def service(
    database: Database,
    directory: Directory,
    wall: WallClock,
    *,
    secret: bytes = SECRET,
    config: SecurityConfig = CONFIG,
) -> TokenService:
    return TokenService(
        database,
        secret,
        config,
        users=directory,
        clock=wall,
        leeway_s=LEEWAY,
        key_cache_s=KEY_CACHE,
        denylist_cache_s=DENYLIST_CACHE,
    )


@pytest.fixture
async def tokens(
    database: Database, directory: Directory, wall: WallClock
) -> AsyncIterator[TokenService]:
    svc = service(database, directory, wall)
    yield svc
    await svc.stop()


async def refused(code: str, call: Any) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        await call
    assert info.value.code == code, info.value.message
    assert info.value.status_code == 401
    return info.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def unsigned(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header_part, payload_part, _ = token.split(".")
    return unb64(header_part), unb64(payload_part)


async def stored_private_key(database: Database, kid: str) -> rsa.RSAPrivateKey:
    """Decrypt a stored signing key the way the format says (AES-GCM, nonce first, kid as
    associated data), to forge tokens with the real key in tests."""
    row = await SigningKeyRepository(database).get(kid)
    assert row is not None
    version, _, body = row.private_encrypted.partition(".")
    assert version == "v1"
    sealed = base64.urlsafe_b64decode(body)
    pem = AESGCM(derive(SECRET, SIGNING_KEY_PURPOSE)).decrypt(
        sealed[:12], sealed[12:], kid.encode()
    )
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def claims_of(pair: TokenPair, **changes: Any) -> dict[str, Any]:
    c = pair.claims
    payload: dict[str, Any] = {
        "iss": "helixflow",
        "sub": c.sub,
        "name": c.name,
        "role": c.role,
        "jti": c.jti,
        "iat": int(c.iat.timestamp()),
        "exp": int(c.exp.timestamp()),
        "typ": "access",
        "sid": c.sid,
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


# --- issue and verify ------------------------------------------------------------------------


async def test_issue_then_verify(tokens: TokenService, database: Database) -> None:
    pair = await tokens.issue(ALICE)
    assert pair.token_type == "bearer"
    assert pair.expires_in == TTL
    assert pair.to_dict() == {
        "access_token": pair.access_token,
        "token_type": "bearer",
        "expires_in": TTL,
        "refresh_token": pair.refresh_token,
    }
    header, payload = unsigned(pair.access_token)
    assert header["alg"] == "RS256"
    assert header["kid"] == pair.claims.kid
    assert payload["iss"] == "helixflow"
    assert payload["sub"] == ALICE.id
    assert payload["name"] == "alice"
    assert payload["role"] == "developer"
    assert payload["typ"] == "access"
    assert payload["iat"] == int(START.timestamp())
    assert payload["exp"] == int(START.timestamp()) + TTL
    assert payload["jti"]

    claims = await tokens.verify(pair.access_token)
    assert claims == pair.claims
    assert claims.user_id == ALICE.id
    assert claims.exp == START + timedelta(seconds=TTL)

    # Opaque refresh token, stored only as a hash; the private key only encrypted.
    assert pair.refresh_token.startswith("hfr_")
    assert "." not in pair.refresh_token
    refresh_repo = RefreshTokenRepository(database)
    assert await refresh_repo.get_by_hash(pair.refresh_token) is None
    key_row = await SigningKeyRepository(database).get(pair.claims.kid)
    assert key_row is not None
    assert "PRIVATE KEY" not in key_row.private_encrypted
    assert key_row.retired_at is None
    assert key_row.expires_at is None


async def test_every_token_has_its_own_jti(tokens: TokenService) -> None:
    first, second = await tokens.issue(ALICE), await tokens.issue(ALICE)
    assert first.claims.jti != second.claims.jti
    assert first.claims.sid != second.claims.sid  # a new family per login
    assert first.claims.kid == second.claims.kid  # one key until rotation


async def test_deactivated_user_gets_no_session(tokens: TokenService) -> None:
    await refused("inactive_user", tokens.issue(replace(ALICE, active=False)))


async def test_expired_token(tokens: TokenService, wall: WallClock) -> None:
    pair = await tokens.issue(ALICE)
    wall.advance(TTL + LEEWAY - 1)
    assert (await tokens.verify(pair.access_token)).sub == ALICE.id  # within the leeway
    wall.advance(1)
    error = await refused("token_expired", tokens.verify(pair.access_token))
    assert "expired" in error.message


async def test_token_from_the_future_is_refused(tokens: TokenService, database: Database) -> None:
    pair = await tokens.issue(ALICE)
    key = await stored_private_key(database, pair.claims.kid)
    later = int(START.timestamp()) + LEEWAY + 5
    forged = jwt.encode(
        claims_of(pair, iat=later, exp=later + TTL),
        key,
        algorithm="RS256",
        headers={"kid": pair.claims.kid},
    )
    await refused("invalid_token", tokens.verify(forged))


async def test_hs256_signed_with_the_public_key_is_refused(
    tokens: TokenService, database: Database
) -> None:
    """The classic confusion: an HMAC 'signed' with the RSA public key as the secret."""
    pair = await tokens.issue(ALICE)
    row = await SigningKeyRepository(database).get(pair.claims.kid)
    assert row is not None
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": pair.claims.kid}).encode())
    payload = b64(json.dumps(claims_of(pair, role="admin")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(row.public_pem.encode(), signing_input, hashlib.sha256).digest()
    forged = f"{header}.{payload}.{b64(signature)}"
    error = await refused("invalid_token", tokens.verify(forged))
    assert "RS256" in error.message


async def test_alg_none_is_refused(tokens: TokenService) -> None:
    pair = await tokens.issue(ALICE)
    header = b64(json.dumps({"alg": "none", "kid": pair.claims.kid}).encode())
    payload = b64(json.dumps(claims_of(pair)).encode())
    await refused("invalid_token", tokens.verify(f"{header}.{payload}."))


async def test_tampered_signature_and_payload(tokens: TokenService) -> None:
    pair = await tokens.issue(ALICE)
    head, body, signature = pair.access_token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    await refused("invalid_token", tokens.verify(f"{head}.{body}.{flipped}"))
    promoted = b64(json.dumps(claims_of(pair, role="admin")).encode())
    await refused("invalid_token", tokens.verify(f"{head}.{promoted}.{signature}"))
    assert (await tokens.verify(pair.access_token)).role == "developer"


async def test_unknown_kid_and_foreign_key(tokens: TokenService) -> None:
    pair = await tokens.issue(ALICE)
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for kid in ("not-a-key-of-ours", pair.claims.kid):
        forged = jwt.encode(claims_of(pair), foreign, algorithm="RS256", headers={"kid": kid})
        await refused("invalid_token", tokens.verify(forged))
    no_kid = jwt.encode(claims_of(pair), foreign, algorithm="RS256")
    await refused("invalid_token", tokens.verify(no_kid))


@pytest.mark.parametrize(
    "changes",
    [
        {"typ": "refresh"},
        {"iss": "someone-else"},
        {"role": "root"},
        {"jti": None},
        {"sub": None},
        {"exp": None},
        {"exp": "tomorrow"},
        {"name": 7},
    ],
    ids=["typ", "iss", "role", "no-jti", "no-sub", "no-exp", "exp-string", "name-int"],
)
async def test_claims_are_checked(
    tokens: TokenService, database: Database, changes: dict[str, Any]
) -> None:
    pair = await tokens.issue(ALICE)
    key = await stored_private_key(database, pair.claims.kid)
    forged = jwt.encode(
        claims_of(pair, **changes), key, algorithm="RS256", headers={"kid": pair.claims.kid}
    )
    await refused("invalid_token", tokens.verify(forged))
    # The same forgery without the change verifies: the key itself is fine.
    genuine = jwt.encode(claims_of(pair), key, algorithm="RS256", headers={"kid": pair.claims.kid})
    assert (await tokens.verify(genuine)).jti == pair.claims.jti


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", "eyJ.eyJ.sig", "x" * 9000, "eyJhbGciOiJSUzI1NiJ9.e30.", "..."],
    ids=["empty", "word", "dots", "bad-b64", "huge", "no-kid", "only-dots"],
)
async def test_malformed_tokens(tokens: TokenService, token: str) -> None:
    await tokens.issue(ALICE)
    await refused("invalid_token", tokens.verify(token))


async def test_leeway_is_bounded(database: Database) -> None:
    with pytest.raises(ValueError, match="leeway"):
        TokenService(database, SECRET, CONFIG, users=Directory(), leeway_s=31)
    with pytest.raises(ValueError, match="leeway"):
        TokenService(database, SECRET, CONFIG, users=Directory(), leeway_s=-1)


async def test_database_away_is_503_not_500(
    tokens: TokenService, directory: Directory, wall: WallClock
) -> None:
    pair = await tokens.issue(ALICE)
    dead = Database(f"postgresql://postgres@127.0.0.1:{closed_port()}/nothing")
    try:
        cut_off = service(dead, directory, wall)
        with pytest.raises(ServiceUnavailableError) as info:
            await cut_off.verify(pair.access_token)
        assert info.value.code == "sessions_unavailable"
        assert info.value.status_code == 503
    finally:
        await dead.dispose()


# --- signing keys ----------------------------------------------------------------------------


async def test_rotation_keeps_the_old_key_until_its_tokens_expired(
    tokens: TokenService, database: Database, wall: WallClock
) -> None:
    first = await tokens.issue(ALICE)
    old_kid = first.claims.kid
    wall.advance(ROTATION - 100)
    late = await tokens.issue(ALICE)  # the old key's last token
    assert late.claims.kid == old_kid
    wall.advance(100)  # the key is due
    fresh = await tokens.issue(BOB)
    new_kid = fresh.claims.kid
    assert new_kid != old_kid

    assert (await tokens.verify(late.access_token)).kid == old_kid
    assert (await tokens.verify(fresh.access_token)).kid == new_kid
    assert {k["kid"] for k in (await tokens.jwks())["keys"]} == {old_kid, new_kid}
    old_row = await SigningKeyRepository(database).get(old_kid)
    assert old_row is not None
    assert old_row.retired_at == wall.now
    assert old_row.expires_at is not None
    assert old_row.expires_at >= late.claims.exp + timedelta(seconds=LEEWAY)

    # The old key's last token expires, then the key itself.
    wall.advance(TTL - 100 + LEEWAY)
    await refused("token_expired", tokens.verify(late.access_token))
    assert {k["kid"] for k in (await tokens.jwks())["keys"]} == {old_kid, new_kid}
    wall.now = old_row.expires_at
    assert [k["kid"] for k in (await tokens.jwks())["keys"]] == [new_kid]
    await refused("invalid_token", tokens.verify(late.access_token))

    await tokens.maintain()
    assert await SigningKeyRepository(database).get(old_kid) is None
    assert await SigningKeyRepository(database).get(new_kid) is not None


async def test_jwks_publishes_rsa_public_keys(tokens: TokenService) -> None:
    pair = await tokens.issue(ALICE)
    (jwk,) = (await tokens.jwks())["keys"]
    assert jwk["kid"] == pair.claims.kid
    assert jwk["kty"] == "RSA"
    assert jwk["alg"] == "RS256"
    assert jwk["use"] == "sig"
    assert jwk["e"] == "AQAB"
    assert "d" not in jwk
    assert "p" not in jwk
    public = jwt.PyJWK.from_dict(jwk).key
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 2048
    decoded = jwt.decode(  # the tokens live on the fake clock: no exp check here
        pair.access_token,
        public,
        algorithms=["RS256"],
        issuer="helixflow",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert decoded["sub"] == ALICE.id


async def test_maintenance_rotates_without_logins(
    tokens: TokenService, database: Database, wall: WallClock
) -> None:
    await tokens.start()  # makes the first key
    (first,) = (await tokens.jwks())["keys"]
    wall.advance(ROTATION)
    await tokens.maintain()
    active = await SigningKeyRepository(database).active()
    assert len(active) == 1
    assert active[0].kid != first["kid"]
    assert len((await tokens.jwks())["keys"]) == 2
    await tokens.stop()
    await tokens.stop()  # twice is harmless


async def test_explicit_rotate(tokens: TokenService) -> None:
    pair = await tokens.issue(ALICE)
    kid = await tokens.rotate()
    assert kid != pair.claims.kid
    assert (await tokens.issue(ALICE)).claims.kid == kid
    assert (await tokens.verify(pair.access_token)).kid == pair.claims.kid


async def test_keys_need_the_shared_secret(
    tokens: TokenService, database: Database, directory: Directory, wall: WallClock
) -> None:
    pair = await tokens.issue(ALICE)
    stranger = service(database, directory, wall, secret=b"another-secret-0123456789abcdef")
    # Public keys need no secret: tokens still verify...
    assert (await stranger.verify(pair.access_token)).sub == ALICE.id
    # ...but the private key cannot be used.
    with pytest.raises(ServiceUnavailableError) as info:
        await stranger.issue(ALICE)
    assert info.value.code == "signing_key_unavailable"
    with pytest.raises(ConfigurationError, match="secret"):
        await stranger.start()


# --- refresh ---------------------------------------------------------------------------------


async def test_refresh_rotates_within_the_family(tokens: TokenService, wall: WallClock) -> None:
    login = await tokens.issue(ALICE)
    wall.advance(60)
    second = await tokens.refresh(login.refresh_token)
    assert second.refresh_token != login.refresh_token
    assert second.access_token != login.access_token
    assert second.claims.sid == login.claims.sid
    assert second.claims.iat == wall.now.replace(microsecond=0)
    assert (await tokens.verify(second.access_token)).sub == ALICE.id
    third = await tokens.refresh(second.refresh_token)
    assert third.claims.sid == login.claims.sid


async def test_reused_refresh_token_revokes_the_family(
    tokens: TokenService, database: Database
) -> None:
    login = await tokens.issue(ALICE)
    other_session = await tokens.issue(ALICE)
    second = await tokens.refresh(login.refresh_token)
    error = await refused("refresh_token_reused", tokens.refresh(login.refresh_token))
    assert "revoked" in error.message
    # The thief's (or the user's) next token of the family is refused too.
    await refused("refresh_token_reused", tokens.refresh(second.refresh_token))
    # Another login of the same user is another family, untouched.
    assert (await tokens.refresh(other_session.refresh_token)).claims.sid == (
        other_session.claims.sid
    )


async def test_concurrent_refreshes_cannot_both_succeed(tokens: TokenService) -> None:
    login = await tokens.issue(ALICE)
    results = await asyncio.gather(
        *(tokens.refresh(login.refresh_token) for _ in range(4)), return_exceptions=True
    )
    pairs = [r for r in results if isinstance(r, TokenPair)]
    errors = [r for r in results if isinstance(r, AuthenticationError)]
    assert len(pairs) == 1, results
    assert len(errors) == 3, results
    assert {e.code for e in errors} == {"refresh_token_reused"}
    for pair in pairs:  # the winner's successor went with the revoked family
        await refused("refresh_token_reused", tokens.refresh(pair.refresh_token))


async def test_mark_used_is_a_compare_and_set(database: Database, directory: Directory) -> None:
    repo = RefreshTokenRepository(database)
    row = RefreshTokenRow(
        id="rt-1",
        family_id="fam-1",
        user_id=ALICE.id,
        token_hash="h" * 64,
        issued_at=START,
        expires_at=START + timedelta(hours=1),
    )
    await repo.add(row)
    outcomes = await asyncio.gather(*(repo.mark_used("rt-1", START) for _ in range(8)))
    assert sorted(outcomes) == [False] * 7 + [True]
    stored = await repo.get_by_hash("h" * 64)
    assert stored is not None
    assert stored.used_at == START
    successor = replace(row, id="rt-2", token_hash="i" * 64)
    assert not await repo.rotate("rt-1", successor, START)  # spent: nothing added
    assert await repo.get_by_hash("i" * 64) is None
    assert not await repo.mark_used("missing", START)


async def test_expired_refresh_token(tokens: TokenService, wall: WallClock) -> None:
    login = await tokens.issue(ALICE)
    wall.advance(REFRESH_TTL)
    await refused("token_expired", tokens.refresh(login.refresh_token))


@pytest.mark.parametrize(
    "token",
    ["", "hfr_", "hfr_unknown", "not-ours", "hfr_" + "x" * 300],
    ids=["empty", "prefix", "unknown", "foreign", "huge"],
)
async def test_invalid_refresh_tokens(tokens: TokenService, token: str) -> None:
    await tokens.issue(ALICE)
    await refused("invalid_token", tokens.refresh(token))


async def test_refresh_follows_the_users_current_record(
    tokens: TokenService, directory: Directory
) -> None:
    login = await tokens.issue(ALICE)
    directory.users[ALICE.id] = replace(ALICE, role="admin", username="alice2")
    promoted = await tokens.refresh(login.refresh_token)
    assert (promoted.claims.role, promoted.claims.name) == ("admin", "alice2")
    directory.users[ALICE.id] = replace(ALICE, active=False)
    await refused("inactive_user", tokens.refresh(promoted.refresh_token))
    directory.users[ALICE.id] = ALICE
    # Deactivation revoked the family: reactivating does not bring the session back.
    await refused("refresh_token_reused", tokens.refresh(promoted.refresh_token))


async def test_refresh_of_a_deleted_user(tokens: TokenService, directory: Directory) -> None:
    login = await tokens.issue(ALICE)
    directory.raise_not_found = True  # as AccountService.get_user does
    await refused("inactive_user", tokens.refresh(login.refresh_token))


async def test_revoke_user(tokens: TokenService) -> None:
    sessions = [await tokens.issue(ALICE) for _ in range(2)]
    bob = await tokens.issue(BOB)
    assert await tokens.revoke_user(ALICE.id) == 2
    for pair in sessions:
        await refused("refresh_token_reused", tokens.refresh(pair.refresh_token))
    await tokens.refresh(bob.refresh_token)


# --- logout ----------------------------------------------------------------------------------


async def test_logout_denies_the_jti_and_revokes_the_family(
    tokens: TokenService, database: Database
) -> None:
    pair = await tokens.issue(ALICE)
    other = await tokens.issue(ALICE)
    claims = await tokens.verify(pair.access_token)
    assert await tokens.logout(claims, pair.refresh_token) == ALICE.id
    await refused("token_revoked", tokens.verify(pair.access_token))
    await refused("refresh_token_reused", tokens.refresh(pair.refresh_token))
    assert await RevokedTokenRepository(database).contains(claims.jti)
    # Only that session ended.
    assert (await tokens.verify(other.access_token)).sub == ALICE.id


async def test_logout_without_refresh_token_revokes_the_family_by_sid(
    tokens: TokenService,
) -> None:
    pair = await tokens.issue(ALICE)
    await tokens.logout(pair.claims, None)
    await refused("refresh_token_reused", tokens.refresh(pair.refresh_token))


async def test_logout_with_only_the_refresh_token(tokens: TokenService) -> None:
    pair = await tokens.issue(BOB)
    assert await tokens.logout(None, pair.refresh_token) == BOB.id
    await refused("refresh_token_reused", tokens.refresh(pair.refresh_token))


async def test_logout_ignores_another_users_refresh_token(tokens: TokenService) -> None:
    alice, bob = await tokens.issue(ALICE), await tokens.issue(BOB)
    await tokens.logout(alice.claims, bob.refresh_token)
    assert (await tokens.refresh(bob.refresh_token)).claims.sub == BOB.id


@pytest.mark.parametrize("refresh_token", [None, "hfr_unknown", "garbage"])
async def test_logout_needs_a_session(tokens: TokenService, refresh_token: str | None) -> None:
    await refused("invalid_token", tokens.logout(None, refresh_token))


async def test_denylist_is_pruned_after_expiry(
    tokens: TokenService, database: Database, wall: WallClock
) -> None:
    pair = await tokens.issue(ALICE)
    await tokens.logout(pair.claims, None)
    revoked = RevokedTokenRepository(database)
    await tokens.maintain()
    assert await revoked.contains(pair.claims.jti)
    wall.advance(TTL + LEEWAY)
    await tokens.maintain()
    assert not await revoked.contains(pair.claims.jti)
    await refused("token_expired", tokens.verify(pair.access_token))


# --- two replicas ----------------------------------------------------------------------------


async def test_two_replicas_share_keys_sessions_and_logouts(
    database: Database, directory: Directory, wall: WallClock
) -> None:
    a = service(database, directory, wall)
    b = service(database, directory, wall)
    from_a = await a.issue(ALICE)
    assert (await b.verify(from_a.access_token)).sub == ALICE.id
    from_b = await b.issue(BOB)
    assert from_b.claims.kid == from_a.claims.kid  # b signs with the key a made
    assert (await a.verify(from_b.access_token)).sub == BOB.id

    # A refresh token from one replica is spent on the other, once.
    refreshed = await b.refresh(from_a.refresh_token)
    await refused("refresh_token_reused", a.refresh(from_a.refresh_token))
    await refused("refresh_token_reused", b.refresh(refreshed.refresh_token))

    # A logout on a is seen by b once b's cached "not revoked" answer has aged out.
    claims = await b.verify(from_b.access_token)
    await a.logout(claims, None)
    await refused("token_revoked", a.verify(from_b.access_token))
    wall.advance(DENYLIST_CACHE)
    await refused("token_revoked", b.verify(from_b.access_token))

    # A rotation on a: b verifies tokens signed by the new key and publishes it.
    wall.advance(ROTATION)
    rotated = await a.issue(ALICE)
    assert rotated.claims.kid != from_a.claims.kid
    assert (await b.verify(rotated.access_token)).kid == rotated.claims.kid
    assert rotated.claims.kid in {k["kid"] for k in (await b.jwks())["keys"]}
    assert (await b.issue(BOB)).claims.kid == rotated.claims.kid


async def test_replica_sees_a_new_kid_after_its_reload_interval(
    database: Database, directory: Directory, wall: WallClock
) -> None:
    a = service(database, directory, wall)
    b = service(database, directory, wall)
    first = await a.issue(ALICE)
    assert (await b.verify(first.access_token)).kid == first.claims.kid  # b loads its keys
    kid = await a.rotate()
    rotated = await a.issue(ALICE)
    assert rotated.claims.kid == kid
    # b reloaded an instant ago: an unknown kid does not make it ask again at once...
    await refused("invalid_token", b.verify(rotated.access_token))
    wall.advance(1)
    # ...but a second later it does.
    assert (await b.verify(rotated.access_token)).kid == kid


async def test_claims_type_is_what_the_middleware_reads(tokens: TokenService) -> None:
    claims = (await tokens.issue(ALICE)).claims
    assert isinstance(claims, AccessClaims)
    assert isinstance(claims.exp, datetime)
    assert claims.exp.tzinfo is not None
    assert (claims.sub, claims.name, claims.role) == (ALICE.id, "alice", "developer")
