"""Spend recorded in ``inference_requests``: what an API key or a user has cost since a moment.

The limiter seeds its spend counters from here (on start, and whenever a shared counter is
missing); after that it counts each request's cost itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import func, select

from helixflow.store.database import Database
from helixflow.store.schema import InferenceRequest, table_of

SpendSubject = Literal["key", "user"]

_REQUESTS = table_of(InferenceRequest)
_COLUMNS = {"key": _REQUESTS.c.api_key_id, "user": _REQUESTS.c.user_id}


class SpendRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def spent(
        self,
        subject: SpendSubject,
        subject_id: str,
        since: datetime | None,
        until: datetime | None = None,
    ) -> float:
        """USD summed over the subject's requests with ``since <= created_at < until``
        (None: unbounded), through the ``(api_key_id | user_id, created_at)`` index."""
        column = _COLUMNS[subject]
        stmt = select(func.coalesce(func.sum(_REQUESTS.c.cost_usd), 0)).where(column == subject_id)
        if since is not None:
            stmt = stmt.where(_REQUESTS.c.created_at >= _utc(since))
        if until is not None:
            stmt = stmt.where(_REQUESTS.c.created_at < _utc(until))
        async with self.database.engine.connect() as conn:
            value = (await conn.execute(stmt)).scalar_one()
        return float(value or 0)


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already (SQLite binds no offset)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


__all__ = ["SpendRepository", "SpendSubject"]
