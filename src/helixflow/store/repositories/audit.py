"""``audit_log``: who did what to which object, with the object before and after.

The table is append-only: triggers (migration 0001) refuse UPDATE and DELETE, so nothing here
changes or removes a row, and a privacy deletion leaves the entries about a user in place
(they are written without e-mail addresses or display names; see ``security/accounts.py``).

The write methods take an optional open connection, so that an action and its audit entry
commit together (:func:`begin` opens one when none is given).
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import String, null, select
from sqlalchemy.ext.asyncio import AsyncConnection

from helixflow.store.database import Database
from helixflow.store.schema import AuditEntry, table_of, utcnow

_TABLE = table_of(AuditEntry)
_LIMITS = {
    column.name: column.type.length
    for column in _TABLE.columns
    if isinstance(column.type, String) and column.type.length
}


@asynccontextmanager
async def begin(database: Database, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
    """``conn`` when given (the caller's transaction), else a new transaction of its own."""
    if conn is not None:
        yield conn
        return
    async with database.engine.begin() as own:
        yield own


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    created_at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    ip_address: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the time as an ISO-8601 string."""
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "before": self.before,
            "after": self.after,
            "request_id": self.request_id,
            "ip_address": self.ip_address,
        }


class AuditRepository:
    """Appends to and reads the audit log."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def append(
        self,
        actor: str,
        action: str,
        target_type: str,
        target_id: str | None = None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        ip: str | None = None,
        *,
        at: datetime | None = None,
        conn: AsyncConnection | None = None,
    ) -> int:
        """Add one entry; returns its id. ``before``/``after`` must be JSON-ready and hold no
        secret (the callers pass public views of the objects)."""
        values: dict[str, Any] = {
            "created_at": _utc(at or utcnow()),
            "actor": _cut(actor, "actor"),
            "action": _cut(action, "action"),
            "target_type": _cut(target_type, "target_type"),
            "target_id": _cut(target_id, "target_id"),
            "before": dict(before) if before is not None else null(),
            "after": dict(after) if after is not None else null(),
            "request_id": _cut(request_id, "request_id"),
            "ip_address": _cut(ip, "ip_address"),
        }
        async with begin(self.database, conn) as c:
            result = await c.execute(_TABLE.insert().values(**values))
            key = result.inserted_primary_key
        if key is None or key[0] is None:  # pragma: no cover - every dialect returns it
            raise RuntimeError("the database returned no id for the audit entry")
        return int(key[0])

    async def list(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        limit: int = 100,
    ) -> builtins.list[AuditRecord]:
        """Entries in ``[since, until)`` matching every filter given, newest first."""
        where = []
        if since is not None:
            where.append(_TABLE.c.created_at >= _utc(since))
        if until is not None:
            where.append(_TABLE.c.created_at < _utc(until))
        for column, value in (
            ("actor", actor),
            ("action", action),
            ("target_type", target_type),
            ("target_id", target_id),
        ):
            if value is not None:
                where.append(_TABLE.c[column] == value)
        query = (
            select(_TABLE)
            .where(*where)
            .order_by(_TABLE.c.created_at.desc(), _TABLE.c.id.desc())
            .limit(limit)
        )
        async with self.database.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            AuditRecord(
                id=int(r["id"]),
                created_at=_utc(r["created_at"]),
                actor=r["actor"],
                action=r["action"],
                target_type=r["target_type"],
                target_id=r["target_id"],
                before=r["before"],
                after=r["after"],
                request_id=r["request_id"],
                ip_address=r["ip_address"],
            )
            for r in rows
        ]


def _cut(value: str | None, column: str) -> str | None:
    """Strings cut to the column's length: an audit entry is never refused for a long name."""
    if value is None:
        return None
    limit = _LIMITS.get(column)
    return value[:limit] if limit is not None and len(value) > limit else value


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already (SQLite binds no offset)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
