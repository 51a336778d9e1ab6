"""The access token's format: an RS256 JWT, its claims, how it is written and read.

A token carries ``iss``, ``sub`` (the user's id), ``name``, ``role``, ``jti``, ``iat``,
``exp``, ``typ`` (``access``) and ``sid`` (its session, the refresh-token family), and names
its signing key in the header's ``kid``. Reading one here checks its form and signature only;
whether it has expired, was issued in the future or was logged out depends on the clock and
the denylist, which :class:`helixflow.security.tokens.TokenService` owns. Kept apart so that
the session logic reads as sessions, not as JWT plumbing.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from helixflow.errors import AuthenticationError
from helixflow.security.identity import ROLES, Role, UserRecord
from helixflow.security.signing_keys import ALGORITHM, Signer

ISSUER = "helixflow"
TOKEN_TYPE = "access"
MAX_ACCESS_TOKEN_CHARS = 8192
_KID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REQUIRED_CLAIMS = ["iss", "sub", "jti", "iat", "exp"]


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


def encode_access_token(
    user: UserRecord, family: str, signer: Signer, now: datetime, ttl_s: int
) -> tuple[str, AccessClaims]:
    """A new access token for ``user`` in session ``family``, valid ``ttl_s`` seconds from
    ``now``, and its claims."""
    issued = int(now.timestamp())
    expires = issued + ttl_s
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


def signing_kid(token: object) -> str:
    """The ``kid`` a token says it was signed with, before anything is verified; raises
    :func:`invalid_token` when the token is malformed or not RS256."""
    if not isinstance(token, str) or not token or len(token) > MAX_ACCESS_TOKEN_CHARS:
        raise invalid_token("The access token is malformed.")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise invalid_token("The access token is malformed.") from None
    if header.get("alg") != ALGORITHM:
        raise invalid_token(f"The access token must be signed with {ALGORITHM}.")
    kid = header.get("kid")
    if not isinstance(kid, str) or not _KID.match(kid):
        raise invalid_token("The access token names no valid signing key.")
    return kid


def decode_access_token(token: str, public_key: rsa.RSAPublicKey, kid: str) -> AccessClaims:
    """The claims of ``token`` once its signature, issuer and claim types check out. ``exp``
    and ``iat`` are not compared with any clock here: the caller does, with its own."""
    try:
        payload = jwt.decode(
            token,
            public_key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={
                "require": _REQUIRED_CLAIMS,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError:
        raise invalid_token("The access token's signature or claims are not valid.") from None
    return _claims(payload, kid)


def invalid_token(message: str) -> AuthenticationError:
    """The 401 for a token that is not a valid access token (code ``invalid_token``)."""
    return AuthenticationError(message, code="invalid_token")


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
        raise invalid_token("The access token's claims are not valid.")
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
