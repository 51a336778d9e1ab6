"""``kv_sessions``: what the session KV store holds, for operators and eviction across replicas."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from helixflow.store.database import Database
from helixflow.store.schema import KVSession, table_of, utcnow

_TABLE = table_of(KVSession)


class KVSessionRepository:
    """Implements the KV store's metadata sink."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def saved(
        self, key: str, model: str, fingerprint: str, tokens: int, tier: str, sha256: str, size: int
    ) -> None:
        now = utcnow()
        values: dict[str, Any] = {
            "fingerprint": fingerprint,
            "n_tokens": tokens,
            "tier": tier,
            "checksum_sha256": sha256,
            "size_bytes": size,
            "last_used_at": now,
            "updated_at": now,
        }
        async with self.database.engine.begin() as conn:
            await self._upsert(conn, {"session_hash": key, "model": model, **values}, values)

    async def _upsert(
        self, conn: AsyncConnection, row: dict[str, Any], changes: dict[str, Any]
    ) -> None:
        dialect = conn.dialect.name
        if dialect in ("postgresql", "sqlite"):
            module = postgresql if dialect == "postgresql" else sqlite
            stmt = module.insert(_TABLE).values(**row, created_at=row["updated_at"], hits=0)
            await conn.execute(
                stmt.on_conflict_do_update(index_elements=["session_hash", "model"], set_=changes)
            )
            return
        existing = await conn.execute(
            select(_TABLE.c.id).where(
                _TABLE.c.session_hash == row["session_hash"], _TABLE.c.model == row["model"]
            )
        )
        found = existing.scalar_one_or_none()
        if found is None:
            await conn.execute(_TABLE.insert().values(**row, created_at=row["updated_at"], hits=0))
        else:
            await conn.execute(update(_TABLE).where(_TABLE.c.id == found).values(**changes))

    async def used(self, key: str, model: str, tier: str) -> None:
        async with self.database.engine.begin() as conn:
            await conn.execute(
                update(_TABLE)
                .where(_TABLE.c.session_hash == key, _TABLE.c.model == model)
                .values(last_used_at=utcnow(), hits=_TABLE.c.hits + 1)
            )

    async def removed(self, key: str, model: str) -> None:
        async with self.database.engine.begin() as conn:
            await conn.execute(
                delete(_TABLE).where(_TABLE.c.session_hash == key, _TABLE.c.model == model)
            )

    async def get(self, key: str, model: str) -> dict[str, Any] | None:
        async with self.database.engine.connect() as conn:
            result = await conn.execute(
                select(_TABLE).where(_TABLE.c.session_hash == key, _TABLE.c.model == model)
            )
            row = result.first()
        return None if row is None else dict(row._mapping)
