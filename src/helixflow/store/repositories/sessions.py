"""Dashboard sessions: ``signing_keys``, ``refresh_tokens`` and the ``revoked_tokens`` denylist.

Every replica reads and writes the same rows, so the state changes that must happen once
(spending a refresh token, retiring a signing key) are compare-and-set updates: an ``UPDATE``
whose ``WHERE`` holds only while nobody else got there first, in the same transaction as what
depends on it. Times are stored and returned as aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import RowMapping, delete, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from helixflow.store.database import Database
from helixflow.store.schema import RefreshToken, RevokedToken, SigningKey, table_of

_KEYS = table_of(SigningKey)
_REFRESH = table_of(RefreshToken)
_REVOKED = table_of(RevokedToken)


class _LostRace(Exception):
    """A compare-and-set found the row changed: roll the transaction back."""


# --- signing keys ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKeyRow:
    """One signing key as stored: the private half encrypted (see ``security/signing_keys.py``)."""

    kid: str
    public_pem: str
    private_encrypted: str
    created_at: datetime
    algorithm: str = "RS256"
    retired_at: datetime | None = None
    """No longer signs new tokens."""
    expires_at: datetime | None = None
    """No longer verifies (its last token has expired); None while it still signs."""

    def verifies_at(self, moment: datetime) -> bool:
        return self.expires_at is None or self.expires_at > moment


class SigningKeyRepository:
    """Adds, lists, retires and deletes signing keys."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def add(self, key: SigningKeyRow) -> None:
        async with self.database.engine.begin() as conn:
            await conn.execute(_KEYS.insert().values(**_key_values(key)))

    async def get(self, kid: str) -> SigningKeyRow | None:
        async with self.database.engine.connect() as conn:
            row = (await conn.execute(select(_KEYS).where(_KEYS.c.kid == kid))).mappings().first()
        return _key(row) if row is not None else None

    async def active(self) -> list[SigningKeyRow]:
        """Keys that still sign (not retired), newest first."""
        query = (
            select(_KEYS)
            .where(_KEYS.c.retired_at.is_(None))
            .order_by(_KEYS.c.created_at.desc(), _KEYS.c.kid.desc())
        )
        async with self.database.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_key(r) for r in rows]

    async def verifying(self, now: datetime) -> list[SigningKeyRow]:
        """Keys that still verify at ``now`` (active ones and retired ones not yet expired),
        newest first."""
        query = (
            select(_KEYS)
            .where(or_(_KEYS.c.expires_at.is_(None), _KEYS.c.expires_at > _utc(now)))
            .order_by(_KEYS.c.created_at.desc(), _KEYS.c.kid.desc())
        )
        async with self.database.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_key(r) for r in rows]

    async def retire(self, kid: str, at: datetime, expires_at: datetime) -> bool:
        """Retire an active key; False when it is unknown or already retired."""
        async with self.database.engine.begin() as conn:
            result = await conn.execute(
                update(_KEYS)
                .where(_KEYS.c.kid == kid, _KEYS.c.retired_at.is_(None))
                .values(retired_at=_utc(at), expires_at=_utc(expires_at))
            )
        return bool(result.rowcount)

    async def rotate(
        self, new: SigningKeyRow, retire: Sequence[str], at: datetime, expires_at: datetime
    ) -> bool:
        """In one transaction: retire every key of ``retire`` (the active keys the caller
        saw) and add ``new``. False, with nothing changed, when any of them was retired
        already: another replica rotated first."""
        try:
            async with self.database.engine.begin() as conn:
                if retire:
                    result = await conn.execute(
                        update(_KEYS)
                        .where(_KEYS.c.kid.in_(list(retire)), _KEYS.c.retired_at.is_(None))
                        .values(retired_at=_utc(at), expires_at=_utc(expires_at))
                    )
                    if result.rowcount != len(set(retire)):
                        raise _LostRace
                await conn.execute(_KEYS.insert().values(**_key_values(new)))
        except _LostRace:
            return False
        return True

    async def delete_expired(self, now: datetime) -> int:
        """Delete retired keys that no longer verify; returns how many."""
        async with self.database.engine.begin() as conn:
            result = await conn.execute(
                delete(_KEYS).where(
                    _KEYS.c.retired_at.is_not(None),
                    _KEYS.c.expires_at.is_not(None),
                    _KEYS.c.expires_at <= _utc(now),
                )
            )
        return int(result.rowcount or 0)


def _key_values(key: SigningKeyRow) -> dict[str, Any]:
    return {
        "kid": key.kid,
        "algorithm": key.algorithm,
        "public_pem": key.public_pem,
        "private_encrypted": key.private_encrypted,
        "created_at": _utc(key.created_at),
        "retired_at": _utc(key.retired_at) if key.retired_at else None,
        "expires_at": _utc(key.expires_at) if key.expires_at else None,
    }


def _key(row: RowMapping) -> SigningKeyRow:
    return SigningKeyRow(
        kid=row["kid"],
        algorithm=row["algorithm"],
        public_pem=row["public_pem"],
        private_encrypted=row["private_encrypted"],
        created_at=_utc(row["created_at"]),
        retired_at=_maybe_utc(row["retired_at"]),
        expires_at=_maybe_utc(row["expires_at"]),
    )


# --- refresh tokens --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefreshTokenRow:
    """One refresh token as stored: its hash, never the token itself."""

    id: str
    family_id: str
    """The login it descends from: every refresh spends one token and adds the next."""
    user_id: str
    token_hash: str
    issued_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None


class RefreshTokenRepository:
    """Adds, spends and revokes refresh tokens."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def add(self, token: RefreshTokenRow) -> None:
        async with self.database.engine.begin() as conn:
            await conn.execute(_REFRESH.insert().values(**_refresh_values(token)))

    async def get_by_hash(self, token_hash: str) -> RefreshTokenRow | None:
        query = select(_REFRESH).where(_REFRESH.c.token_hash == token_hash)
        async with self.database.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return _refresh(row) if row is not None else None

    async def mark_used(self, token_id: str, at: datetime) -> bool:
        """Spend a token: True for exactly one caller, however many try at once; False when
        it was used or revoked already (or is unknown)."""
        async with self.database.engine.begin() as conn:
            result = await conn.execute(_spend(token_id, at))
        return bool(result.rowcount)

    async def rotate(self, used_id: str, successor: RefreshTokenRow, at: datetime) -> bool:
        """In one transaction: spend ``used_id`` (compare-and-set, as :meth:`mark_used`) and
        add its ``successor``. False, with nothing added, when the token was spent or revoked
        already."""
        try:
            async with self.database.engine.begin() as conn:
                result = await conn.execute(_spend(used_id, at))
                if result.rowcount != 1:
                    raise _LostRace
                await conn.execute(_REFRESH.insert().values(**_refresh_values(successor)))
        except _LostRace:
            return False
        return True

    async def revoke_family(self, family_id: str, at: datetime) -> int:
        """Revoke every token of a family not revoked yet; returns how many."""
        async with self.database.engine.begin() as conn:
            result = await conn.execute(
                update(_REFRESH)
                .where(_REFRESH.c.family_id == family_id, _REFRESH.c.revoked_at.is_(None))
                .values(revoked_at=_utc(at))
            )
        return int(result.rowcount or 0)

    async def revoke_user(self, user_id: str, at: datetime) -> int:
        """Revoke every token of a user (password change, deactivation); returns how many."""
        async with self.database.engine.begin() as conn:
            result = await conn.execute(
                update(_REFRESH)
                .where(_REFRESH.c.user_id == user_id, _REFRESH.c.revoked_at.is_(None))
                .values(revoked_at=_utc(at))
            )
        return int(result.rowcount or 0)

    async def delete_expired(self, before: datetime) -> int:
        """Delete tokens that expired before ``before``; returns how many."""
        async with self.database.engine.begin() as conn:
            result = await conn.execute(
                delete(_REFRESH).where(_REFRESH.c.expires_at < _utc(before))
            )
        return int(result.rowcount or 0)


def _spend(token_id: str, at: datetime) -> Any:
    return (
        update(_REFRESH)
        .where(
            _REFRESH.c.id == token_id,
            _REFRESH.c.used_at.is_(None),
            _REFRESH.c.revoked_at.is_(None),
        )
        .values(used_at=_utc(at))
    )


def _refresh_values(token: RefreshTokenRow) -> dict[str, Any]:
    return {
        "id": token.id,
        "family_id": token.family_id,
        "user_id": token.user_id,
        "token_hash": token.token_hash,
        "issued_at": _utc(token.issued_at),
        "expires_at": _utc(token.expires_at),
        "used_at": _utc(token.used_at) if token.used_at else None,
        "revoked_at": _utc(token.revoked_at) if token.revoked_at else None,
    }


def _refresh(row: RowMapping) -> RefreshTokenRow:
    return RefreshTokenRow(
        id=row["id"],
        family_id=row["family_id"],
        user_id=row["user_id"],
        token_hash=row["token_hash"],
        issued_at=_utc(row["issued_at"]),
        expires_at=_utc(row["expires_at"]),
        used_at=_maybe_utc(row["used_at"]),
        revoked_at=_maybe_utc(row["revoked_at"]),
    )


# --- the denylist ----------------------------------------------------------------------------


class RevokedTokenRepository:
    """Access tokens logged out before they expire, by ``jti``."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def add(self, jti: str, expires_at: datetime) -> None:
        """Deny ``jti`` until ``expires_at``; adding it twice is harmless."""
        row = {"jti": jti, "expires_at": _utc(expires_at)}
        async with self.database.engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect in ("postgresql", "sqlite"):
                module = postgresql if dialect == "postgresql" else sqlite
                stmt = module.insert(_REVOKED).values(**row)
                await conn.execute(stmt.on_conflict_do_nothing(index_elements=["jti"]))
                return
            found = await conn.execute(select(_REVOKED.c.jti).where(_REVOKED.c.jti == jti))
            if found.first() is None:
                await conn.execute(_REVOKED.insert().values(**row))

    async def contains(self, jti: str) -> bool:
        async with self.database.engine.connect() as conn:
            result = await conn.execute(select(exists().where(_REVOKED.c.jti == jti)))
            return bool(result.scalar())

    async def prune(self, before: datetime) -> int:
        """Delete entries whose token has expired by ``before``; returns how many."""
        async with self.database.engine.begin() as conn:
            result = await conn.execute(
                delete(_REVOKED).where(_REVOKED.c.expires_at <= _utc(before))
            )
        return int(result.rowcount or 0)


def _maybe_utc(moment: datetime | None) -> datetime | None:
    return _utc(moment) if moment is not None else None


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already (SQLite binds no offset)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
