"""``alerts``: what the router's alert rules fired, and when each alert resolved.

A row is written when an alert fires (state ``firing``) and updated once when its condition
clears (state ``resolved``, ``resolved_at`` set). Times are stored and returned in UTC.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select, update

from helixflow.store.database import Database
from helixflow.store.schema import Alert, table_of, utcnow

_TABLE = table_of(Alert)

Severity = Literal["warning", "critical"]
AlertState = Literal["firing", "resolved"]
SEVERITIES: tuple[Severity, ...] = ("warning", "critical")
ALERT_STATES: tuple[AlertState, ...] = ("firing", "resolved")


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert as it is logged, stored and posted to the webhook."""

    rule: str
    target: str | None
    """None for a rule over every target (open circuits)."""
    severity: Severity
    value: float
    threshold: float
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    state: AlertState = "firing"
    created_at: datetime = field(default_factory=utcnow)
    resolved_at: datetime | None = None
    id: int | None = None
    """The row's id once stored."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO-8601 strings."""
        return {
            "id": self.id,
            "rule": self.rule,
            "target": self.target,
            "severity": self.severity,
            "state": self.state,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "details": dict(self.details),
            "created_at": self.created_at.isoformat(),
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
        }


class AlertRepository:
    """Stores and lists alerts."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def add(self, alert: AlertRecord) -> int:
        """Insert ``alert``; returns its new id."""
        values: dict[str, Any] = {
            "created_at": _utc(alert.created_at),
            "rule": alert.rule,
            "target": alert.target,
            "severity": alert.severity,
            "state": alert.state,
            "value": float(alert.value),
            "threshold": float(alert.threshold),
            "message": alert.message,
            "details": dict(alert.details) if alert.details else None,
            "resolved_at": _utc(alert.resolved_at) if alert.resolved_at else None,
        }
        async with self.database.engine.begin() as conn:
            result = await conn.execute(_TABLE.insert().values(**values))
            key = result.inserted_primary_key
        if key is None or key[0] is None:  # pragma: no cover - every dialect returns it
            raise RuntimeError("the database returned no id for the new alert")
        return int(key[0])

    async def resolve(self, alert_id: int, at: datetime) -> bool:
        """Mark a firing alert resolved at ``at``; False when no firing alert has that id."""
        async with self.database.engine.begin() as conn:
            result = await conn.execute(
                update(_TABLE)
                .where(_TABLE.c.id == alert_id, _TABLE.c.state == "firing")
                .values(state="resolved", resolved_at=_utc(at))
            )
        return bool(result.rowcount)

    async def list(
        self,
        since: datetime,
        until: datetime,
        rule: str | None = None,
        target: str | None = None,
        state: AlertState | None = None,
        limit: int = 100,
    ) -> builtins.list[dict[str, Any]]:
        """Alerts created in ``[since, until)``, newest first, at most ``limit``."""
        where = [_TABLE.c.created_at >= _utc(since), _TABLE.c.created_at < _utc(until)]
        if rule is not None:
            where.append(_TABLE.c.rule == rule)
        if target is not None:
            where.append(_TABLE.c.target == target)
        if state is not None:
            where.append(_TABLE.c.state == state)
        query = (
            select(_TABLE)
            .where(*where)
            .order_by(_TABLE.c.created_at.desc(), _TABLE.c.id.desc())
            .limit(limit)
        )
        async with self.database.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_row(dict(r)) for r in rows]


def _row(row: dict[str, Any]) -> dict[str, Any]:
    row["created_at"] = _utc(row["created_at"])
    if row["resolved_at"] is not None:
        row["resolved_at"] = _utc(row["resolved_at"])
    if row["details"] is None:
        row["details"] = {}
    return row


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already (SQLite binds no offset)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
