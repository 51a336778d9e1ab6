"""GET /api/v1/router/alerts: the alerts the router's rules fired, newest first.

The time range (``window``, or ``since``/``until``) is the analytics API's (see
``windows.py``); an alert belongs to the range it was created in. Query parameters arrive as
strings and are validated here, so that every refusal is a 400 envelope naming the parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from helixflow.api.admin.analytics import (
    LimitParam,
    Range,
    get_database,
)
from helixflow.errors import InvalidRequestError
from helixflow.router.alerts import RULES
from helixflow.store.database import Database
from helixflow.store.repositories.alerts import ALERT_STATES, AlertRepository, AlertState

router = APIRouter(prefix="/api/v1/router", tags=["router"])

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TARGET_CHARS = 256


def get_alerts(database: Annotated[Database, Depends(get_database)]) -> AlertRepository:
    return AlertRepository(database)


def _schema(**schema: Any) -> Callable[[dict[str, Any]], None]:
    """Replace a string parameter's generated schema with what it really accepts."""

    def apply(generated: dict[str, Any]) -> None:
        generated.clear()
        generated.update(schema)

    return apply


Alerts = Annotated[AlertRepository, Depends(get_alerts)]

RuleParam = Annotated[
    str | None,
    Query(
        description=f"Only this rule: {', '.join(RULES)}.",
        json_schema_extra=_schema(type="string", enum=list(RULES)),
    ),
]
TargetParam = Annotated[
    str | None, Query(description="Only this target (`provider/model` or a local model).")
]
StateParam = Annotated[
    str | None,
    Query(
        description="Only alerts in this state: firing or resolved.",
        json_schema_extra=_schema(type="string", enum=list(ALERT_STATES)),
    ),
]


def _blank(value: str | None) -> str | None:
    return value.strip() if value is not None and value.strip() else None


def _rule(value: str | None) -> str | None:
    name = _blank(value)
    if name is not None and name not in RULES:
        raise InvalidRequestError(
            f"Invalid rule {value!r}: use one of {', '.join(RULES)}.",
            param="rule",
            code="invalid_rule",
        )
    return name


def _target(value: str | None) -> str | None:
    name = _blank(value)
    if name is not None and len(name) > MAX_TARGET_CHARS:
        raise InvalidRequestError(
            f"Invalid target: at most {MAX_TARGET_CHARS} characters.",
            param="target",
            code="invalid_target",
        )
    return name


def _state(value: str | None) -> AlertState | None:
    name = _blank(value)
    if name is not None and name not in ALERT_STATES:
        raise InvalidRequestError(
            f"Invalid state {value!r}: use one of {', '.join(ALERT_STATES)}.",
            param="state",
            code="invalid_state",
        )
    return name


def _limit(value: str | None) -> int:
    text = _blank(value)
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid limit {value!r}: expected an integer.", param="limit", code="invalid_limit"
        ) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(
            f"Invalid limit {limit}: it must be between 1 and {MAX_LIMIT}.",
            param="limit",
            code="invalid_limit",
        )
    return limit


class AlertItem(BaseModel):
    id: int
    created_at: datetime
    rule: str
    target: str | None = Field(description="None for a rule over every target (open circuits).")
    severity: Literal["warning", "critical"]
    state: Literal["firing", "resolved"]
    value: float
    threshold: float
    message: str
    details: dict[str, Any]
    resolved_at: datetime | None


class AlertsResponse(BaseModel):
    since: datetime = Field(description="Start of the range (inclusive, UTC).")
    until: datetime = Field(description="End of the range (exclusive, UTC).")
    alerts: list[AlertItem]


@router.get("/alerts", response_model=AlertsResponse)
async def list_alerts(
    alerts: Alerts,
    time_range: Range,
    rule: RuleParam = None,
    target: TargetParam = None,
    state: StateParam = None,
    limit: LimitParam = None,
) -> AlertsResponse:
    """Alerts created in the range (error rate, latency p95, open circuits), newest first."""
    rows = await alerts.list(
        time_range.since,
        time_range.until,
        rule=_rule(rule),
        target=_target(target),
        state=_state(state),
        limit=_limit(limit),
    )
    return AlertsResponse(
        since=time_range.since,
        until=time_range.until,
        alerts=[AlertItem.model_validate(r) for r in rows],
    )
