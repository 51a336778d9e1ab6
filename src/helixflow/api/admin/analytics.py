"""GET /api/v1/analytics/*: routing, model performance, agents, time series and usage.

Each endpoint takes a time range (``window``, or ``since``/``until``; see ``windows.py``) and
answers with the resolved range beside its rows. Query parameters arrive as strings and are
validated with ``params.py``, so that every refusal is a 400 envelope naming the parameter
itself; their OpenAPI schemas still say what they accept.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from helixflow.api.admin import params
from helixflow.api.admin.params import LimitParam
from helixflow.api.admin.windows import (
    BUCKETS,
    DEFAULT_WINDOW,
    MAX_BUCKETS,
    TimeRange,
    parse_bucket,
    resolve_range,
)
from helixflow.errors import ServiceUnavailableError
from helixflow.store.database import Database
from helixflow.store.repositories.analytics import (
    GROUP_COLUMNS,
    AnalyticsRepository,
    Bucket,
    GroupBy,
)

router = APIRouter(prefix="/api/v1/analytics", tags=["analytics"])


# --- dependencies ----------------------------------------------------------------------------


def get_database(request: Request) -> Database:
    """The Database the lifespan put on ``app.state``."""
    database = getattr(request.app.state, "database", None)
    if database is None:
        raise ServiceUnavailableError("Analytics need a database, and none is configured.")
    return cast(Database, database)


def get_analytics(database: Annotated[Database, Depends(get_database)]) -> AnalyticsRepository:
    return AnalyticsRepository(database)


def get_now() -> datetime:
    """The end of a ``window``; a dependency so that tests can pin it."""
    return datetime.now(UTC)


WindowParam = Annotated[
    str | None,
    Query(
        description=f"How far back from now: 15m, 1h, 24h, 7d (at most 90d). "
        f"Default {DEFAULT_WINDOW}. Not with `since`.",
        json_schema_extra=params.schema(type="string", pattern=r"^([0-9]+[smhdw])+$"),
    ),
]
SinceParam = Annotated[
    str | None,
    Query(
        description="Start of the range (ISO-8601, inclusive; UTC when no offset is given).",
        json_schema_extra=params.schema(type="string", format="date-time"),
    ),
]
UntilParam = Annotated[
    str | None,
    Query(
        description="End of the range (ISO-8601, exclusive); default now.",
        json_schema_extra=params.schema(type="string", format="date-time"),
    ),
]
ModelParam = Annotated[str | None, Query(description="Only this served model.")]
ProviderParam = Annotated[str | None, Query(description="Only this provider.")]
BucketParam = Annotated[
    str,
    Query(
        description=f"Bucket width; at most {MAX_BUCKETS} buckets per range "
        "(minute: up to 24h, hour: up to 60d).",
        json_schema_extra=params.schema(type="string", enum=list(BUCKETS), default="hour"),
    ),
]
GroupByParam = Annotated[
    str,
    Query(
        description="Whose usage: per API key, per user or per end user (the `user` field).",
        json_schema_extra=params.schema(type="string", enum=list(GROUP_COLUMNS), default="api_key"),
    ),
]


def get_time_range(
    now: Annotated[datetime, Depends(get_now)],
    window: WindowParam = None,
    since: SinceParam = None,
    until: UntilParam = None,
) -> TimeRange:
    return resolve_range(window=window, since=since, until=until, now=now)


Analytics = Annotated[AnalyticsRepository, Depends(get_analytics)]
Range = Annotated[TimeRange, Depends(get_time_range)]


# --- responses -------------------------------------------------------------------------------


class _Row(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class RoutingStatItem(_Row):
    served_model: str | None
    provider: str | None = Field(description="None for a local model.")
    requests: int
    successes: int
    success_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class ModelPerformanceItem(_Row):
    served_model: str
    requests: int
    errors: int
    error_rate: float
    latency_avg_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_avg_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    output_tokens_per_second: float | None = Field(
        description="Completion tokens per second of latency, over successful requests."
    )
    prompt_tokens_avg: float
    completion_tokens_avg: float


class AgentModelItem(_Row):
    agent_id: str
    served_model: str
    requests: int
    success_rate: float
    latency_avg_ms: float | None
    cost_usd: float
    assignment_score: float | None = Field(
        description="The agent's active assignment score for this model, if it has one."
    )


class TimeseriesItem(_Row):
    bucket_start: datetime
    requests: int
    errors: int
    tokens: int = Field(description="Prompt plus completion tokens.")
    latency_avg_ms: float | None
    latency_p95_ms: float | None


class UsageItem(_Row):
    key: str | None = Field(description="The API key id, user or end user; None: not recorded.")
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class _RangeResponse(BaseModel):
    since: datetime = Field(description="Start of the range (inclusive, UTC).")
    until: datetime = Field(description="End of the range (exclusive, UTC).")


class RoutingStatsResponse(_RangeResponse):
    data: list[RoutingStatItem]


class ModelPerformanceResponse(_RangeResponse):
    data: list[ModelPerformanceItem]


class AgentModelsResponse(_RangeResponse):
    data: list[AgentModelItem]


class TimeseriesResponse(_RangeResponse):
    bucket: Literal["minute", "hour", "day"]
    data: list[TimeseriesItem] = Field(
        description="Every bucket from the one holding `since` to `until`, empty ones included "
        "(zero counts, null latencies)."
    )


class UsageResponse(_RangeResponse):
    group_by: Literal["api_key", "user", "end_user"]
    data: list[UsageItem]


# --- endpoints -------------------------------------------------------------------------------


@router.get("/routing", response_model=RoutingStatsResponse)
async def routing_stats(
    analytics: Analytics,
    time_range: Range,
    model: ModelParam = None,
    provider: ProviderParam = None,
) -> RoutingStatsResponse:
    """Requests, success rate, latency percentiles, tokens and cost per (model, provider)."""
    rows = await analytics.routing_stats(
        time_range.since,
        time_range.until,
        model=params.present(model),
        provider=params.present(provider),
    )
    return RoutingStatsResponse(
        since=time_range.since,
        until=time_range.until,
        data=[RoutingStatItem.model_validate(r) for r in rows],
    )


@router.get("/models", response_model=ModelPerformanceResponse)
async def model_performance(
    analytics: Analytics, time_range: Range, model: ModelParam = None
) -> ModelPerformanceResponse:
    """Error rate, latency and TTFT (average, p50, p95) and throughput per served model."""
    rows = await analytics.model_performance(
        time_range.since, time_range.until, params.present(model)
    )
    return ModelPerformanceResponse(
        since=time_range.since,
        until=time_range.until,
        data=[ModelPerformanceItem.model_validate(r) for r in rows],
    )


@router.get("/agents/top", response_model=AgentModelsResponse)
async def top_agent_models(
    analytics: Analytics, time_range: Range, limit: LimitParam = None
) -> AgentModelsResponse:
    """The most used (agent, model) pairs, with the agent's assignment score for the model."""
    rows = await analytics.top_agent_models(time_range.since, time_range.until, params.limit(limit))
    return AgentModelsResponse(
        since=time_range.since,
        until=time_range.until,
        data=[AgentModelItem.model_validate(r) for r in rows],
    )


@router.get("/timeseries", response_model=TimeseriesResponse)
async def timeseries(
    analytics: Analytics,
    time_range: Range,
    bucket: BucketParam = "hour",
    model: ModelParam = None,
) -> TimeseriesResponse:
    """Requests, errors, tokens and latency per minute, hour or day."""
    name = cast(Bucket, parse_bucket(bucket, time_range))
    rows = await analytics.timeseries(
        time_range.since, time_range.until, name, params.present(model)
    )
    return TimeseriesResponse(
        since=time_range.since,
        until=time_range.until,
        bucket=name,
        data=[TimeseriesItem.model_validate(r) for r in rows],
    )


@router.get("/usage", response_model=UsageResponse)
async def usage(
    analytics: Analytics,
    time_range: Range,
    group_by: GroupByParam = "api_key",
    limit: LimitParam = None,
) -> UsageResponse:
    """Requests, errors, tokens and cost per API key, user or end user; busiest first."""
    group = cast(GroupBy, params.one_of(group_by, "group_by", GROUP_COLUMNS))
    rows = await analytics.usage(time_range.since, time_range.until, group, params.limit(limit))
    return UsageResponse(
        since=time_range.since,
        until=time_range.until,
        group_by=group,
        data=[UsageItem.model_validate(r) for r in rows],
    )
