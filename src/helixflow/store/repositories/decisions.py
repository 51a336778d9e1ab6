"""Read side of ``routing_decisions``: the router's recorded decisions, listed and summarized.

The telemetry writer stores one row per routed request (see ``RoutingEvent``); this module only
reads them. A time range is half-open, ``since <= created_at < until``, in UTC. Listings are
newest first by ``id`` (the order the rows were stored), so that ``before_id`` pages through
them without skipping or repeating a row while new decisions arrive.
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, select

from helixflow.store.database import Database
from helixflow.store.schema import RoutingDecision, table_of

_TABLE = table_of(RoutingDecision)

COLUMNS = (
    "id",
    "request_id",
    "created_at",
    "requested_model",
    "strategy",
    "candidates",
    "chosen_target",
    "reason",
    "fallback_attempts",
    "attempts",
    "decision_ms",
)
"""The columns of a listed decision, in order."""


class DecisionRepository:
    """Lists and summarizes routing decisions over a half-open UTC range."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def list(
        self,
        since: datetime,
        until: datetime,
        *,
        target: str | None = None,
        requested_model: str | None = None,
        strategy: str | None = None,
        fallback_only: bool = False,
        failed_only: bool = False,
        limit: int = 100,
        before_id: int | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Decisions made in ``[since, until)``, newest (highest id) first, at most ``limit``.

        ``target`` matches the chosen target; ``fallback_only`` keeps the decisions that needed
        at least one fallback attempt, ``failed_only`` those where every target failed (no
        chosen target). ``before_id`` continues a listing: only ids below it.
        """
        where = _range(since, until)
        if target is not None:
            where.append(_TABLE.c.chosen_target == target)
        if requested_model is not None:
            where.append(_TABLE.c.requested_model == requested_model)
        if strategy is not None:
            where.append(_TABLE.c.strategy == strategy)
        if fallback_only:
            where.append(_TABLE.c.fallback_attempts > 0)
        if failed_only:
            where.append(_TABLE.c.chosen_target.is_(None))
        if before_id is not None:
            where.append(_TABLE.c.id < before_id)
        query = (
            select(*(_TABLE.c[name] for name in COLUMNS))
            .where(*where)
            .order_by(_TABLE.c.id.desc())
            .limit(limit)
        )
        async with self.database.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_row(dict(r)) for r in rows]

    async def summary(self, since: datetime, until: datetime) -> builtins.list[dict[str, Any]]:
        """Per chosen target (failed decisions under ``target`` None), busiest first.

        Each row: ``target``, ``decisions``, ``fallbacks`` (decisions with at least one
        fallback attempt), ``failed`` (decisions where every target failed) and
        ``decision_avg_ms`` (None when no decision recorded its time).
        """
        chosen = _TABLE.c.chosen_target
        decisions = func.count()
        query = (
            select(
                chosen.label("target"),
                decisions.label("decisions"),
                _count(_TABLE.c.fallback_attempts > 0).label("fallbacks"),
                _count(chosen.is_(None)).label("failed"),
                func.avg(_TABLE.c.decision_ms).label("decision_avg_ms"),
            )
            .where(*_range(since, until))
            .group_by(chosen)
            .order_by(decisions.desc(), case((chosen.is_(None), 1), else_=0), chosen)
        )
        async with self.database.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "target": r.target,
                "decisions": int(r.decisions),
                "fallbacks": int(r.fallbacks),
                "failed": int(r.failed),
                "decision_avg_ms": None if r.decision_avg_ms is None else float(r.decision_avg_ms),
            }
            for r in rows
        ]


def _range(since: datetime, until: datetime) -> builtins.list[ColumnElement[bool]]:
    created_at = _TABLE.c.created_at
    return [created_at >= _utc(since), created_at < _utc(until)]


def _count(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _row(row: dict[str, Any]) -> dict[str, Any]:
    row["created_at"] = _utc(row["created_at"])
    row["candidates"] = row["candidates"] or []
    row["attempts"] = row["attempts"] or []
    row["fallback_attempts"] = int(row["fallback_attempts"] or 0)
    if row["decision_ms"] is not None:
        row["decision_ms"] = float(row["decision_ms"])
    return row


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already (SQLite binds no offset)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


__all__ = ["COLUMNS", "DecisionRepository"]
