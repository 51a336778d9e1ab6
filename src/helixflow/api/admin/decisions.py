"""GET /api/v1/router/decisions: why each request went where it went, and a summary per target.

The rows are those the router records in ``routing_decisions`` (one per routed request). The
time range (``window``, or ``since``/``until``) is the analytics API's (see ``windows.py``); a
decision belongs to the range it was made in. The listing is newest first and pages with
``before_id``: pass the previous page's ``next_before_id`` (null on the last page). Query
parameters arrive as strings and are validated here, so that every refusal is a 400 envelope
naming the parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from helixflow.api.admin.analytics import LimitParam, Range, get_database
from helixflow.errors import InvalidRequestError
from helixflow.router.strategies import STRATEGIES
from helixflow.store.database import Database
from helixflow.store.repositories.decisions import DecisionRepository

router = APIRouter(prefix="/api/v1/router", tags=["router"])

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_NAME_CHARS = 256
"""The longest target or model name stored (the columns' length)."""
MAX_ID = 2**63 - 1
"""The largest id a row can have (a 64-bit integer)."""
STRATEGY_NAMES: tuple[str, ...] = (*STRATEGIES, "direct")
"""What the router records as a decision's strategy: a registered strategy for a group, or
``direct`` when the request named a concrete model."""
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def get_decisions(database: Annotated[Database, Depends(get_database)]) -> DecisionRepository:
    return DecisionRepository(database)


def _schema(**schema: Any) -> Callable[[dict[str, Any]], None]:
    """Replace a string parameter's generated schema with what it really accepts."""

    def apply(generated: dict[str, Any]) -> None:
        generated.clear()
        generated.update(schema)

    return apply


Decisions = Annotated[DecisionRepository, Depends(get_decisions)]

TargetParam = Annotated[
    str | None,
    Query(
        description="Only decisions that chose this target (`provider/model` or a local model).",
        json_schema_extra=_schema(type="string", maxLength=MAX_NAME_CHARS),
    ),
]
ModelParam = Annotated[
    str | None,
    Query(
        description="Only requests for this model or group, as the client named it.",
        json_schema_extra=_schema(type="string", maxLength=MAX_NAME_CHARS),
    ),
]
StrategyParam = Annotated[
    str | None,
    Query(
        description="Only decisions made by this strategy (`direct`: a concrete model).",
        json_schema_extra=_schema(type="string", enum=list(STRATEGY_NAMES)),
    ),
]
FallbackOnlyParam = Annotated[
    str | None,
    Query(
        description="Only decisions that needed at least one fallback attempt.",
        json_schema_extra=_schema(type="boolean", default=False),
    ),
]
FailedOnlyParam = Annotated[
    str | None,
    Query(
        description="Only decisions where every target failed (no chosen target).",
        json_schema_extra=_schema(type="boolean", default=False),
    ),
]
BeforeIdParam = Annotated[
    str | None,
    Query(
        description="Only decisions older than this id: the previous page's `next_before_id`.",
        json_schema_extra=_schema(type="integer", minimum=1, maximum=MAX_ID),
    ),
]


def _blank(value: str | None) -> str | None:
    return value.strip() if value is not None and value.strip() else None


def _name(value: str | None, param: str) -> str | None:
    name = _blank(value)
    if name is not None and len(name) > MAX_NAME_CHARS:
        raise InvalidRequestError(
            f"Invalid {param}: at most {MAX_NAME_CHARS} characters.",
            param=param,
            code=f"invalid_{param}",
        )
    return name


def _strategy(value: str | None) -> str | None:
    name = _blank(value)
    if name is not None and name not in STRATEGY_NAMES:
        raise InvalidRequestError(
            f"Invalid strategy {value!r}: use one of {', '.join(STRATEGY_NAMES)}.",
            param="strategy",
            code="invalid_strategy",
        )
    return name


def _flag(value: str | None, param: str) -> bool:
    text = _blank(value)
    if text is None:
        return False
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise InvalidRequestError(
        f"Invalid {param} {value!r}: use true or false.",
        param=param,
        code=f"invalid_{param}",
    )


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


def _before_id(value: str | None) -> int | None:
    text = _blank(value)
    if text is None:
        return None
    try:
        before_id = int(text)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid before_id {value!r}: expected an integer.",
            param="before_id",
            code="invalid_before_id",
        ) from None
    if not 1 <= before_id <= MAX_ID:
        raise InvalidRequestError(
            f"Invalid before_id {before_id}: it must be between 1 and {MAX_ID}.",
            param="before_id",
            code="invalid_before_id",
        )
    return before_id


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
    page = _limit(limit)
    rows = await decisions.list(
        time_range.since,
        time_range.until,
        target=_name(target, "target"),
        requested_model=_name(model, "model"),
        strategy=_strategy(strategy),
        fallback_only=_flag(fallback_only, "fallback_only"),
        failed_only=_flag(failed_only, "failed_only"),
        limit=page + 1,  # one more, to know whether another page follows
        before_id=_before_id(before_id),
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
