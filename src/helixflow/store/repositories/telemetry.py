"""Batched, idempotent inserts of telemetry events."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from helixflow.store.database import Database
from helixflow.store.schema import InferenceRequest, RoutingDecision, table_of
from helixflow.store.telemetry.events import TelemetryEvent


class TelemetryRepository:
    """Writes batches of events; a request id already stored is skipped, never duplicated."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def insert(self, events: Sequence[TelemetryEvent]) -> int:
        """Insert ``events`` in one transaction; returns how many rows were new."""
        by_table: dict[Table, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            by_table[event.table].append(event.row())
        inserted = 0
        async with self.database.engine.begin() as conn:
            for table, rows in by_table.items():
                inserted += await self._insert_new(conn, table, _unique(rows))
        return inserted

    async def _insert_new(
        self, conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]
    ) -> int:
        dialect = conn.dialect.name
        if dialect in ("postgresql", "sqlite"):
            module = postgresql if dialect == "postgresql" else sqlite
            stmt = module.insert(table).on_conflict_do_nothing(index_elements=["request_id"])
            result = await conn.execute(stmt, rows)
            return max(result.rowcount, 0)
        # Portable path: skip the ids already present, then a plain multi-row insert.
        ids = [row["request_id"] for row in rows]
        present = set(
            (
                await conn.execute(select(table.c.request_id).where(table.c.request_id.in_(ids)))
            ).scalars()
        )
        fresh = [row for row in rows if row["request_id"] not in present]
        if fresh:
            await conn.execute(table.insert(), fresh)
        return len(fresh)


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first row of each request id within one batch."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row["request_id"] not in seen:
            seen.add(row["request_id"])
            out.append(row)
    return out


class RetentionRepository:
    """Deletes telemetry rows older than a cutoff, a bounded batch per statement."""

    TABLES: tuple[Table, ...] = (
        table_of(InferenceRequest),
        table_of(RoutingDecision),
    )

    def __init__(self, database: Database) -> None:
        self.database = database

    async def prune_batch(self, table: Table, cutoff: datetime, batch_size: int) -> int:
        """Delete up to ``batch_size`` of the oldest rows created before ``cutoff``."""
        oldest = (
            select(table.c.id)
            .where(table.c.created_at < cutoff)
            .order_by(table.c.id)
            .limit(batch_size)
            .subquery()
        )
        async with self.database.engine.begin() as conn:
            result = await conn.execute(delete(table).where(table.c.id.in_(select(oldest.c.id))))
        return max(result.rowcount, 0)
