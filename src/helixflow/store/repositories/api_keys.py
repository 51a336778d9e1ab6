"""``api_keys``: keys as stored, by keyed hash (the key itself is never stored).

Records are :class:`helixflow.security.identity.KeyRecord`; the hash stays in this module
(only :meth:`ApiKeyRepository.get_by_hash` takes one). ``last_used_at`` is written in batches
(:meth:`ApiKeyRepository.touch`) so that using a key costs no write per request.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Row, bindparam, delete, exists, null, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from helixflow.security.identity import KeyRecord, Role
from helixflow.security_config import BudgetPeriod, LimitSet
from helixflow.store.database import Database
from helixflow.store.repositories.audit import begin
from helixflow.store.schema import ApiKey, table_of, utcnow

_KEYS = table_of(ApiKey)


class ApiKeyRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(
        self, key: KeyRecord, key_hash: str, *, conn: AsyncConnection | None = None
    ) -> KeyRecord:
        """Insert ``key`` under ``key_hash``; returns it as stored (with ``created_at``)."""
        limits = key.limits
        values: dict[str, Any] = {
            "id": key.id,
            "name": key.name,
            "key_hash": key_hash,
            "prefix": key.prefix,
            "owner_id": key.owner_id,
            "role": key.role,
            "allowed_models": null() if key.allowed_models is None else sorted(key.allowed_models),
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "max_parallel": limits.max_parallel,
            "budget_usd": limits.budget_usd,
            "budget_period": limits.budget_period,
            "expires_at": None if key.expires_at is None else _utc(key.expires_at),
            "revoked_at": None if key.revoked_at is None else _utc(key.revoked_at),
            "last_used_at": None,
            "created_at": _utc(key.created_at or utcnow()),
            "created_by": key.created_by,
        }
        async with begin(self.database, conn) as c:
            await c.execute(_KEYS.insert().values(**values))
        created = await self.get(key.id, conn=conn)
        if created is None:  # pragma: no cover - just inserted
            raise RuntimeError(f"key {key.id} vanished after insert")
        return created

    async def get(self, key_id: str, *, conn: AsyncConnection | None = None) -> KeyRecord | None:
        return await self._one(select(_KEYS).where(_KEYS.c.id == key_id), conn)

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        return await self._one(select(_KEYS).where(_KEYS.c.key_hash == key_hash), None)

    async def list(
        self,
        *,
        owner_id: str | None = None,
        include_revoked: bool = True,
        conn: AsyncConnection | None = None,
    ) -> builtins.list[KeyRecord]:
        """Keys of ``owner_id`` (None: every key), newest first."""
        stmt = select(_KEYS).order_by(_KEYS.c.created_at.desc(), _KEYS.c.id)
        if owner_id is not None:
            stmt = stmt.where(_KEYS.c.owner_id == owner_id)
        if not include_revoked:
            stmt = stmt.where(_KEYS.c.revoked_at.is_(None))
        if conn is not None:
            rows = (await conn.execute(stmt)).all()
        else:
            async with self.database.engine.connect() as own:
                rows = (await own.execute(stmt)).all()
        return [key_from_row(r) for r in rows]

    async def revoke(
        self, key_id: str, at: datetime, *, conn: AsyncConnection | None = None
    ) -> bool:
        """Set ``revoked_at``; False when there is no such key or it is revoked already."""
        async with begin(self.database, conn) as c:
            result = await c.execute(
                update(_KEYS)
                .where(_KEYS.c.id == key_id, _KEYS.c.revoked_at.is_(None))
                .values(revoked_at=_utc(at))
            )
        return bool(result.rowcount)

    async def touch(self, last_used: Mapping[str, datetime]) -> None:
        """Record when keys were last used (key id -> time), in one batch; a time older than
        the one stored is ignored."""
        if not last_used:
            return
        stmt = (
            update(_KEYS)
            .where(
                _KEYS.c.id == bindparam("key_id"),
                or_(
                    _KEYS.c.last_used_at.is_(None),
                    _KEYS.c.last_used_at < bindparam("used_at"),
                ),
            )
            .values(last_used_at=bindparam("used_at"))
        )
        rows = [{"key_id": k, "used_at": _utc(v)} for k, v in sorted(last_used.items())]
        async with self.database.engine.begin() as conn:
            await conn.execute(stmt, rows)

    async def delete_by_owner(self, owner_id: str, *, conn: AsyncConnection | None = None) -> int:
        """Delete every key of ``owner_id``; returns how many."""
        async with begin(self.database, conn) as c:
            result = await c.execute(delete(_KEYS).where(_KEYS.c.owner_id == owner_id))
        return int(result.rowcount or 0)

    async def any_unrevoked(self) -> bool:
        """True when some key is not revoked (expired or not)."""
        stmt = select(exists().where(_KEYS.c.revoked_at.is_(None)))
        async with self.database.engine.connect() as conn:
            return bool((await conn.execute(stmt)).scalar())

    async def _one(self, stmt: Any, conn: AsyncConnection | None) -> KeyRecord | None:
        if conn is not None:
            row = (await conn.execute(stmt)).first()
        else:
            async with self.database.engine.connect() as own:
                row = (await own.execute(stmt)).first()
        return None if row is None else key_from_row(row)


def key_from_row(row: Row[Any]) -> KeyRecord:
    models = row.allowed_models
    return KeyRecord(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        role=cast(Role, row.role),
        owner_id=row.owner_id,
        allowed_models=None if models is None else frozenset(str(m) for m in models),
        limits=LimitSet(
            rpm=row.rpm,
            tpm=row.tpm,
            max_parallel=row.max_parallel,
            budget_usd=None if row.budget_usd is None else float(row.budget_usd),
            budget_period=cast(BudgetPeriod, row.budget_period),
        ),
        expires_at=None if row.expires_at is None else _utc(row.expires_at),
        revoked_at=None if row.revoked_at is None else _utc(row.revoked_at),
        created_at=None if row.created_at is None else _utc(row.created_at),
        last_used_at=None if row.last_used_at is None else _utc(row.last_used_at),
        created_by=row.created_by,
    )


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
