"""GET /api/v1/router/alerts: the alerts the router's rules fired, newest first.

The time range (``window``, or ``since``/``until``) is the analytics API's (see
``windows.py``); an alert belongs to the range it was created in. Query parameters arrive as
strings and are validated with ``params.py``, so that every refusal is a 400 envelope naming
the parameter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from helixflow.api.admin import params
from helixflow.api.admin.analytics import Range, get_database
from helixflow.api.admin.params import LimitParam
from helixflow.router.alerts import RULES
from helixflow.store.database import Database
from helixflow.store.repositories.alerts import ALERT_STATES, AlertRepository

router = APIRouter(prefix="/api/v1/router", tags=["router"])


def get_alerts(database: Annotated[Database, Depends(get_database)]) -> AlertRepository:
    return AlertRepository(database)


Alerts = Annotated[AlertRepository, Depends(get_alerts)]

RuleParam = Annotated[
    str | None,
    Query(
        description=f"Only this rule: {', '.join(RULES)}.",
        json_schema_extra=params.schema(type="string", enum=list(RULES)),
    ),
]
TargetParam = Annotated[
    str | None, Query(description="Only this target (`provider/model` or a local model).")
]
StateParam = Annotated[
    str | None,
    Query(
        description="Only alerts in this state: firing or resolved.",
        json_schema_extra=params.schema(type="string", enum=list(ALERT_STATES)),
    ),
]


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
        rule=params.optional_one_of(rule, "rule", RULES),
        target=params.name(target, "target"),
        state=params.optional_one_of(state, "state", ALERT_STATES),
        limit=params.limit(limit),
    )
    return AlertsResponse(
        since=time_range.since,
        until=time_range.until,
        alerts=[AlertItem.model_validate(r) for r in rows],
    )
