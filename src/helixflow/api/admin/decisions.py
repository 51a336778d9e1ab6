"""GET /api/v1/router/decisions: why each request went where it went, and a summary per target.

The rows are those the router records in ``routing_decisions`` (one per routed request). The
time range (``window``, or ``since``/``until``) is the analytics API's (see ``windows.py``); a
decision belongs to the range it was made in. The listing is newest first and pages with
``before_id``: pass the previous page's ``next_before_id`` (null on the last page). Query
parameters arrive as strings and are validated with ``params.py``, so that every refusal is a
400 envelope naming the parameter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from helixflow.api.admin import params
from helixflow.api.admin.analytics import Range, get_database
from helixflow.api.admin.params import MAX_NAME_CHARS, LimitParam
from helixflow.router.strategies import STRATEGIES
from helixflow.store.database import Database
from helixflow.store.repositories.decisions import DecisionRepository

router = APIRouter(prefix="/api/v1/router", tags=["router"])

MAX_ID = 2**63 - 1
"""The largest id a row can have (a 64-bit integer)."""
STRATEGY_NAMES: tuple[str, ...] = (*STRATEGIES, "direct")
"""What the router records as a decision's strategy: a registered strategy for a group, or
``direct`` when the request named a concrete model."""


def get_decisions(database: Annotated[Database, Depends(get_database)]) -> DecisionRepository:
    return DecisionRepository(database)


Decisions = Annotated[DecisionRepository, Depends(get_decisions)]

TargetParam = Annotated[
    str | None,
    Query(
        description="Only decisions that chose this target (`provider/model` or a local model).",
        json_schema_extra=params.schema(type="string", maxLength=MAX_NAME_CHARS),
    ),
]
ModelParam = Annotated[
    str | None,
    Query(
        description="Only requests for this model or group, as the client named it.",
        json_schema_extra=params.schema(type="string", maxLength=MAX_NAME_CHARS),
    ),
]
StrategyParam = Annotated[
    str | None,
    Query(
        description="Only decisions made by this strategy (`direct`: a concrete model).",
        json_schema_extra=params.schema(type="string", enum=list(STRATEGY_NAMES)),
    ),
]
FallbackOnlyParam = Annotated[
    str | None,
    Query(
        description="Only decisions that needed at least one fallback attempt.",
        json_schema_extra=params.schema(type="boolean", default=False),
    ),
]
FailedOnlyParam = Annotated[
    str | None,
    Query(
        description="Only decisions where every target failed (no chosen target).",
        json_schema_extra=params.schema(type="boolean", default=False),
    ),
]
BeforeIdParam = Annotated[
    str | None,
    Query(
        description="Only decisions older than this id: the previous page's `next_before_id`.",
        json_schema_extra=params.schema(type="integer", minimum=1, maximum=MAX_ID),
    ),
]


# --- responses -------------------------------------------------------------------------------


class DecisionItem(BaseModel):
    id: int
    request_id: str
    created_at: datetime
    requested_model: str | None
    strategy: str
    candidates: list[Any] = Field(
        description="Every target considered, with its score or why it was left out."
    )
    chosen_target: str | None = Field(description="None when every target failed.")
    reason: str | None
    fallback_attempts: int
    attempts: list[Any] = Field(description="Each attempt in order: target, status, error, ms.")
    decision_ms: float | None


class DecisionSummaryItem(BaseModel):
    target: str | None = Field(description="The chosen target; None: every target failed.")
    decisions: int
    fallbacks: int = Field(description="Decisions that needed at least one fallback attempt.")
    failed: int = Field(description="Decisions where every target failed.")
    decision_avg_ms: float | None


class _RangeResponse(BaseModel):
    since: datetime = Field(description="Start of the range (inclusive, UTC).")
    until: datetime = Field(description="End of the range (exclusive, UTC).")


class DecisionsResponse(_RangeResponse):
    data: list[DecisionItem]
    next_before_id: int | None = Field(
        description="Pass as `before_id` for the next page; null on the last page."
    )


class DecisionSummaryResponse(_RangeResponse):
    data: list[DecisionSummaryItem]


# --- endpoints -------------------------------------------------------------------------------


@router.get("/decisions", response_model=DecisionsResponse)
async def list_decisions(
    decisions: Decisions,
    time_range: Range,
    target: TargetParam = None,
    model: ModelParam = None,
    strategy: StrategyParam = None,
    fallback_only: FallbackOnlyParam = None,
    failed_only: FailedOnlyParam = None,
    limit: LimitParam = None,
    before_id: BeforeIdParam = None,
) -> DecisionsResponse:
    """Routing decisions made in the range, newest first, a page at a time."""
    page = params.limit(limit)
    rows = await decisions.list(
        time_range.since,
        time_range.until,
        target=params.name(target, "target"),
        requested_model=params.name(model, "model"),
        strategy=params.optional_one_of(strategy, "strategy", STRATEGY_NAMES),
        fallback_only=params.flag(fallback_only, "fallback_only"),
        failed_only=params.flag(failed_only, "failed_only"),
        limit=page + 1,  # one more, to know whether another page follows
        before_id=params.integer(before_id, "before_id", MAX_ID),
    )
    more = len(rows) > page
    rows = rows[:page]
    return DecisionsResponse(
        since=time_range.since,
        until=time_range.until,
        data=[DecisionItem.model_validate(r) for r in rows],
        next_before_id=rows[-1]["id"] if more else None,
    )


@router.get("/decisions/summary", response_model=DecisionSummaryResponse)
async def decision_summary(decisions: Decisions, time_range: Range) -> DecisionSummaryResponse:
    """Decisions, fallbacks, failures and average decision time per chosen target."""
    rows = await decisions.summary(time_range.since, time_range.until)
    return DecisionSummaryResponse(
        since=time_range.since,
        until=time_range.until,
        data=[DecisionSummaryItem.model_validate(r) for r in rows],
    )
