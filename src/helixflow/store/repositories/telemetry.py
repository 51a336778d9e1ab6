"""Batched, idempotent inserts of telemetry events.

PostgreSQL takes each kind of event of a batch in one statement: every column travels as one
array and the server rebuilds the rows, ``INSERT INTO t (c1, ..., cn) SELECT * FROM
unnest($1::t1[], ..., $n::tn[]) ON CONFLICT (request_id) DO NOTHING``. Its text does not depend
on the batch's size, so it is prepared once per connection; asyncpg encodes the arrays in C;
the server plans and runs one statement per batch, not one per row as SQLAlchemy's executemany
does with asyncpg (which moreover reports no row count); and the columns are read straight off
the events, cut to their column's length as ``TelemetryEvent.row()`` cuts them, without a dict
per row. It runs through SQLAlchemy's connection, so its errors arrive wrapped like those of
any other statement. SQLite takes ``INSERT ... ON CONFLICT DO NOTHING`` as an executemany;
other databases first select the request ids already present.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from helixflow.store.database import Database
from helixflow.store.schema import InferenceRequest, RoutingDecision, table_of
from helixflow.store.telemetry.events import TelemetryEvent

KEY = "request_id"
"""The idempotency key: a unique column of every telemetry table."""


class TelemetryRepository:
    """Writes batches of events; a request id already stored is skipped, never duplicated."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._unnest: dict[type[TelemetryEvent], _UnnestInsert] = {}

    async def insert(self, events: Sequence[TelemetryEvent]) -> int:
        """Insert ``events`` in one transaction; returns how many rows were new.

        Within the batch the first event of each request id (per kind) counts; a request id
        already stored is skipped.
        """
        if not events:
            return 0
        by_kind: dict[type[TelemetryEvent], list[TelemetryEvent]] = defaultdict(list)
        for event in events:
            by_kind[type(event)].append(event)
        groups = [(kind, _unique(group)) for kind, group in by_kind.items()]
        dialect = self.database.engine.dialect
        inserted = 0
        if dialect.name == "postgresql":
            # The arrays are built before a connection is taken, so that it does not wait.
            work = []
            for kind, group in groups:
                statement = self._unnest_insert(dialect, kind)
                work.append((statement.sql, statement.parameters(group)))
            async with self.database.engine.begin() as conn:
                for sql, arrays in work:
                    result = await conn.exec_driver_sql(sql, arrays)
                    inserted += max(result.rowcount, 0)
            return inserted
        async with self.database.engine.begin() as conn:
            for kind, group in groups:
                rows = [event.row() for event in group]
                inserted += await self._insert_rows(conn, kind.table, rows)
        return inserted

    async def _insert_rows(
        self, conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]
    ) -> int:
        if conn.dialect.name == "sqlite":
            stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=[KEY])
            result = await conn.execute(stmt, rows)
            return max(result.rowcount, 0)
        # Portable path: skip the ids already present, then a plain multi-row insert.
        ids = [row[KEY] for row in rows]
        present = set(
            (await conn.execute(select(table.c[KEY]).where(table.c[KEY].in_(ids)))).scalars()
        )
        fresh = [row for row in rows if row[KEY] not in present]
        if fresh:
            await conn.execute(table.insert(), fresh)
        return len(fresh)

    def _unnest_insert(self, dialect: Dialect, kind: type[TelemetryEvent]) -> _UnnestInsert:
        statement = self._unnest.get(kind)
        if statement is None:
            statement = self._unnest[kind] = _UnnestInsert.build(dialect, kind)
        return statement


@dataclass(frozen=True, slots=True)
class _Column:
    """How one column's array is read off the events."""

    get: Callable[[Any], Any]
    limit: int | None
    """Strings longer than this are cut (the column's length), as ``row()`` cuts them."""
    convert: Callable[[Any], Any] | None
    """SQLAlchemy's bind conversion of the column's type (JSON serialization, for one)."""

    def values(self, events: Sequence[TelemetryEvent]) -> list[Any]:
        values = list(map(self.get, events))
        limit = self.limit
        if limit is not None:
            values = [v[:limit] if isinstance(v, str) and len(v) > limit else v for v in values]
        if self.convert is not None:
            values = list(map(self.convert, values))
        return values


@dataclass(frozen=True, slots=True)
class _UnnestInsert:
    """One kind of event's PostgreSQL statement, and how to turn events into its arrays."""

    sql: str
    columns: tuple[_Column, ...]

    @classmethod
    def build(cls, dialect: Dialect, kind: type[TelemetryEvent]) -> _UnnestInsert:
        table = kind.table
        names = [f.name for f in fields(kind)]  # what row() returns, in its order
        columns = [table.c[name] for name in names]
        preparer = dialect.identifier_preparer
        arrays = ", ".join(
            f"${i}::{column.type.compile(dialect=dialect)}[]"
            for i, column in enumerate(columns, start=1)
        )
        sql = (
            f"INSERT INTO {preparer.format_table(table)} "
            f"({', '.join(preparer.quote(name) for name in names)}) "
            f"SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT ({preparer.quote(KEY)}) DO NOTHING"
        )
        return cls(
            sql,
            tuple(
                _Column(
                    get=attrgetter(name),
                    limit=kind.limits.get(name),
                    convert=column.type.dialect_impl(dialect).bind_processor(dialect),
                )
                for name, column in zip(names, columns, strict=True)
            ),
        )

    def parameters(self, events: Sequence[TelemetryEvent]) -> tuple[list[Any], ...]:
        """One array per column."""
        return tuple(column.values(events) for column in self.columns)


def _unique(events: list[TelemetryEvent]) -> list[TelemetryEvent]:
    """The first event of each request id within one batch."""
    seen: set[str] = set()
    out = []
    for event in events:
        if event.request_id not in seen:
            seen.add(event.request_id)
            out.append(event)
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
