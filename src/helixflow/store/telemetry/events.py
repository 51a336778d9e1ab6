"""The events the request path records: plain dataclasses, cheap to build and to spool."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import String, Table

from helixflow.store.schema import InferenceRequest, RoutingDecision, table_of, utcnow


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _string_limits(table: Table) -> dict[str, int]:
    return {
        column.name: column.type.length
        for column in table.columns
        if isinstance(column.type, String) and column.type.length
    }


@dataclass(slots=True, kw_only=True)
class TelemetryEvent:
    """Base class: one row of ``table``, keyed by ``request_id`` (the idempotency key)."""

    kind: ClassVar[str]
    table: ClassVar[Table]
    limits: ClassVar[dict[str, int]]

    request_id: str
    created_at: datetime = field(default_factory=utcnow)

    def row(self) -> dict[str, Any]:
        """Column values: strings cut to their column's length so that no row is refused, the
        time in UTC (SQLite keeps a timestamp's wall time and drops its offset)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            limit = self.limits.get(f.name)
            if limit is not None and isinstance(value, str) and len(value) > limit:
                value = value[:limit]
            out[f.name] = value
        out["created_at"] = as_utc(self.created_at)
        return out


@dataclass(slots=True, kw_only=True)
class InferenceEvent(TelemetryEvent):
    """One API request (a row of ``inference_requests``)."""

    kind: ClassVar[str] = "inference"
    table: ClassVar[Table] = table_of(InferenceRequest)
    limits: ClassVar[dict[str, int]] = _string_limits(table_of(InferenceRequest))

    endpoint: str
    status: str
    http_status: int
    latency_ms: float
    client_request_id: str | None = None
    api_key_id: str | None = None
    user_id: str | None = None
    end_user: str | None = None
    agent_id: str | None = None
    requested_model: str | None = None
    served_model: str | None = None
    provider: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_ms: float | None = None
    cost_usd: float = 0.0
    cache_hit: bool = False
    streamed: bool = False
    experiment_id: str | None = None
    experiment_arm: str | None = None


@dataclass(slots=True, kw_only=True)
class RoutingEvent(TelemetryEvent):
    """Why one request went where it went (a row of ``routing_decisions``)."""

    kind: ClassVar[str] = "routing"
    table: ClassVar[Table] = table_of(RoutingDecision)
    limits: ClassVar[dict[str, int]] = _string_limits(table_of(RoutingDecision))

    strategy: str
    requested_model: str | None = None
    candidates: list[dict[str, Any]] | None = None
    chosen_target: str | None = None
    reason: str | None = None
    fallback_attempts: int = 0
    attempts: list[dict[str, Any]] | None = None
    decision_ms: float | None = None


EVENT_TYPES: dict[str, type[TelemetryEvent]] = {
    cls.kind: cls for cls in (InferenceEvent, RoutingEvent)
}
"""Event kinds by name: the spool writes the name, replay builds the class back."""


def event_from_record(kind: str, data: dict[str, Any]) -> TelemetryEvent:
    """Rebuild a spooled event; raises KeyError/TypeError/ValueError on a foreign record."""
    cls = EVENT_TYPES[kind]
    data = dict(data)
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    return cls(**data)
