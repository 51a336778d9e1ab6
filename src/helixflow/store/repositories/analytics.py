"""Read-side analytics over ``inference_requests``: routing, model performance, agents, usage.

Every figure is computed in SQL; Python only shapes rows into typed results and fills empty
time buckets. A time range is half-open, ``since <= created_at < until``, so the queries use the
``created_at`` index (or ``served_model, created_at`` when a model is given).

Percentiles are ``percentile_cont``'s (linear interpolation between the two nearest ranks, as
``numpy.percentile`` does by default). PostgreSQL computes them with its ordered-set aggregate;
other dialects rank the rows with window functions and interpolate in the same query (see
:class:`_RankedPercentiles`). What differs between dialects lives in one :class:`_Flavor` each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Double,
    Row,
    Select,
    String,
    Subquery,
    and_,
    case,
    func,
    literal,
    select,
    true,
)
from sqlalchemy.sql.expression import literal_column

from helixflow.store.database import Database
from helixflow.store.schema import (
    Agent,
    AgentModelAssignment,
    InferenceRequest,
    Model,
    table_of,
)

Bucket = Literal["minute", "hour", "day"]
GroupBy = Literal["api_key", "user", "end_user"]

BUCKET_WIDTHS: Mapping[str, timedelta] = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}
GROUP_COLUMNS: Mapping[str, str] = {
    "api_key": "api_key_id",
    "user": "user_id",
    "end_user": "end_user",
}

_REQUESTS = table_of(InferenceRequest)
_MEASURES = ("status", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cost_usd")


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoutingStat:
    """Where requests went: one (served model, provider) pair. ``provider`` is None for local."""

    served_model: str | None
    provider: str | None
    requests: int
    successes: int
    success_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class ModelPerformance:
    """How one served model performed. TTFT figures ignore requests that recorded none."""

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
    output_tokens_per_second: float | None
    """Completion tokens over latency seconds, both summed over successful requests."""
    prompt_tokens_avg: float
    completion_tokens_avg: float


@dataclass(frozen=True, slots=True)
class AgentModelUsage:
    """One (agent, served model) pair, with the agent's active assignment score to that model."""

    agent_id: str
    served_model: str
    requests: int
    success_rate: float
    latency_avg_ms: float | None
    cost_usd: float
    assignment_score: float | None


@dataclass(frozen=True, slots=True)
class TimeseriesPoint:
    """One time bucket, starting at ``bucket_start`` (UTC). Empty buckets hold zeros and Nones."""

    bucket_start: datetime
    requests: int
    errors: int
    tokens: int
    latency_avg_ms: float | None
    latency_p95_ms: float | None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Consumption of one API key, user or end user; ``key`` is None for unattributed requests."""

    key: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


# --- dialect flavors -------------------------------------------------------------------------


class _Flavor:
    """Builds the filtered rows, their percentiles and time buckets for one dialect."""

    def rows(
        self,
        where: Sequence[ColumnElement[bool]],
        keys: Mapping[str, ColumnElement[Any]],
        ranked: Iterable[str] = (),
    ) -> Subquery:
        """The requests matching ``where``: the ``keys`` (labelled) and the measure columns."""
        del ranked  # only the window-function flavor needs ranks
        return _base_rows(where, keys).subquery("rows")

    def percentile(self, rows: Subquery, column: str, fraction: float) -> ColumnElement[float]:
        """The ``fraction`` percentile of ``column`` within each group of ``rows``."""
        return func.percentile_cont(literal(fraction, Double())).within_group(rows.c[column])

    def bucket(self, column: ColumnElement[datetime], bucket: Bucket) -> ColumnElement[Any]:
        """The UTC start of each row's bucket, as a naive timestamp."""
        return func.date_trunc(bucket, func.timezone("UTC", column), type_=DateTime())


class _RankedPercentiles(_Flavor):
    """Percentiles without ``percentile_cont``: ranks from window functions, then interpolation.

    For ``n`` non-null values ranked ``rn = 0 .. n-1`` within their group, the position is
    ``h = (n - 1) * p``; the result is ``x[lo] + (x[hi] - x[lo]) * (h - lo)`` where ``lo`` is the
    rank with ``lo <= h < lo + 1`` and ``hi`` the one with ``hi - 1 < h <= hi``. Comparisons keep
    it free of ``floor``/``ceil``, which SQLite may lack.
    """

    def rows(
        self,
        where: Sequence[ColumnElement[bool]],
        keys: Mapping[str, ColumnElement[Any]],
        ranked: Iterable[str] = (),
    ) -> Subquery:
        stmt = _base_rows(where, keys)
        for name in ranked:
            column = _REQUESTS.c[name]
            is_null = case((column.is_(None), 1), else_=0)
            stmt = stmt.add_columns(
                (
                    func.row_number().over(partition_by=[*keys.values(), is_null], order_by=column)
                    - 1
                ).label(f"_rank_{name}"),
                func.count(column).over(partition_by=list(keys.values())).label(f"_count_{name}"),
            )
        return stmt.subquery("rows")

    def percentile(self, rows: Subquery, column: str, fraction: float) -> ColumnElement[float]:
        value = rows.c[column]
        rank = rows.c[f"_rank_{column}"]
        position = (rows.c[f"_count_{column}"] - 1) * literal(fraction, Double())
        present = value.is_not(None)
        at_lo = and_(present, rank <= position, position < rank + 1)
        at_hi = and_(present, rank >= position, position > rank - 1)
        lo = func.max(case((at_lo, value)))
        hi = func.max(case((at_hi, value)))
        weight = func.max(case((at_lo, position - rank)))
        return (lo + (hi - lo) * weight).cast(Double())

    def bucket(self, column: ColumnElement[datetime], bucket: Bucket) -> ColumnElement[Any]:
        formats = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d"}
        return func.strftime(formats[bucket], column, type_=String())


class _HanaFlavor(_RankedPercentiles):
    """SAP HANA: ranked percentiles as elsewhere; buckets formatted with ``TO_VARCHAR``."""

    def bucket(self, column: ColumnElement[datetime], bucket: Bucket) -> ColumnElement[Any]:
        formats = {"minute": "YYYY-MM-DD HH24:MI", "hour": "YYYY-MM-DD HH24", "day": "YYYY-MM-DD"}
        return func.to_varchar(column, literal_column(f"'{formats[bucket]}'"), type_=String())


_FLAVORS: Mapping[str, _Flavor] = {
    "postgresql": _Flavor(),
    "sqlite": _RankedPercentiles(),
    "hana": _HanaFlavor(),
}


def _base_rows(
    where: Sequence[ColumnElement[bool]], keys: Mapping[str, ColumnElement[Any]]
) -> Select[Any]:
    columns: list[ColumnElement[Any]] = [expr.label(name) for name, expr in keys.items()]
    columns += [_REQUESTS.c[name] for name in _MEASURES if name not in keys]
    return select(*columns).where(*where)


# --- the repository --------------------------------------------------------------------------


class AnalyticsRepository:
    """Aggregates over stored requests; every method takes a half-open UTC range."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._flavor = _FLAVORS.get(database.dialect, _RankedPercentiles())

    async def routing_stats(
        self,
        since: datetime,
        until: datetime,
        model: str | None = None,
        provider: str | None = None,
    ) -> list[RoutingStat]:
        """Per (served model, provider), busiest first."""
        where = _range(since, until)
        if model is not None:
            where.append(_REQUESTS.c.served_model == model)
        if provider is not None:
            where.append(_REQUESTS.c.provider == provider)
        keys = {"served_model": _REQUESTS.c.served_model, "provider": _REQUESTS.c.provider}
        rows = self._flavor.rows(where, keys, ranked=("latency_ms", "ttft_ms"))
        pct = partial(self._flavor.percentile, rows)
        stmt = (
            select(
                rows.c.served_model,
                rows.c.provider,
                func.count().label("requests"),
                _count_status(rows, "success").label("successes"),
                pct("latency_ms", 0.50).label("latency_p50"),
                pct("latency_ms", 0.95).label("latency_p95"),
                pct("ttft_ms", 0.50).label("ttft_p50"),
                _sum(rows.c.prompt_tokens).label("prompt_tokens"),
                _sum(rows.c.completion_tokens).label("completion_tokens"),
                _sum(rows.c.cost_usd).label("cost_usd"),
            )
            .group_by(rows.c.served_model, rows.c.provider)
            .order_by(func.count().desc(), *_nulls_last(rows.c.served_model, rows.c.provider))
        )
        return [
            RoutingStat(
                served_model=r.served_model,
                provider=r.provider,
                requests=r.requests,
                successes=int(r.successes),
                success_rate=_ratio(r.successes, r.requests),
                latency_p50_ms=_float(r.latency_p50),
                latency_p95_ms=_float(r.latency_p95),
                ttft_p50_ms=_float(r.ttft_p50),
                prompt_tokens=int(r.prompt_tokens),
                completion_tokens=int(r.completion_tokens),
                cost_usd=float(r.cost_usd),
            )
            for r in await self._fetch(stmt)
        ]

    async def model_performance(
        self, since: datetime, until: datetime, model: str | None = None
    ) -> list[ModelPerformance]:
        """Per served model (requests without one are left out), busiest first."""
        where = [*_range(since, until), _REQUESTS.c.served_model.is_not(None)]
        if model is not None:
            where.append(_REQUESTS.c.served_model == model)
        keys = {"served_model": _REQUESTS.c.served_model}
        rows = self._flavor.rows(where, keys, ranked=("latency_ms", "ttft_ms"))
        pct = partial(self._flavor.percentile, rows)
        succeeded = rows.c.status == "success"
        stmt = (
            select(
                rows.c.served_model,
                func.count().label("requests"),
                _count_status(rows, "error").label("errors"),
                func.avg(rows.c.latency_ms).label("latency_avg"),
                pct("latency_ms", 0.50).label("latency_p50"),
                pct("latency_ms", 0.95).label("latency_p95"),
                func.avg(rows.c.ttft_ms).label("ttft_avg"),
                pct("ttft_ms", 0.50).label("ttft_p50"),
                pct("ttft_ms", 0.95).label("ttft_p95"),
                _sum(case((succeeded, rows.c.completion_tokens), else_=0)).label("ok_tokens"),
                _sum(case((succeeded, rows.c.latency_ms), else_=0.0)).label("ok_latency"),
                _sum(rows.c.prompt_tokens).label("prompt_tokens"),
                _sum(rows.c.completion_tokens).label("completion_tokens"),
            )
            .group_by(rows.c.served_model)
            .order_by(func.count().desc(), rows.c.served_model)
        )
        return [
            ModelPerformance(
                served_model=r.served_model,
                requests=r.requests,
                errors=int(r.errors),
                error_rate=_ratio(r.errors, r.requests),
                latency_avg_ms=_float(r.latency_avg),
                latency_p50_ms=_float(r.latency_p50),
                latency_p95_ms=_float(r.latency_p95),
                ttft_avg_ms=_float(r.ttft_avg),
                ttft_p50_ms=_float(r.ttft_p50),
                ttft_p95_ms=_float(r.ttft_p95),
                output_tokens_per_second=(
                    float(r.ok_tokens) / (float(r.ok_latency) / 1000.0)
                    if float(r.ok_latency) > 0
                    else None
                ),
                prompt_tokens_avg=_ratio(r.prompt_tokens, r.requests),
                completion_tokens_avg=_ratio(r.completion_tokens, r.requests),
            )
            for r in await self._fetch(stmt)
        ]

    async def top_agent_models(
        self, since: datetime, until: datetime, limit: int
    ) -> list[AgentModelUsage]:
        """The ``limit`` most used (agent, served model) pairs, with the active assignment score.

        The score is that of the agent's most recent active assignment to the model, matched by
        ``agents.name = agent_id`` and ``models.name = served_model``; None when there is none.
        """
        where = [
            *_range(since, until),
            _REQUESTS.c.agent_id.is_not(None),
            _REQUESTS.c.served_model.is_not(None),
        ]
        keys = {"agent_id": _REQUESTS.c.agent_id, "served_model": _REQUESTS.c.served_model}
        rows = self._flavor.rows(where, keys)
        top = (
            select(
                rows.c.agent_id,
                rows.c.served_model,
                func.count().label("requests"),
                _count_status(rows, "success").label("successes"),
                func.avg(rows.c.latency_ms).label("latency_avg"),
                _sum(rows.c.cost_usd).label("cost_usd"),
            )
            .group_by(rows.c.agent_id, rows.c.served_model)
            .order_by(func.count().desc(), rows.c.agent_id, rows.c.served_model)
            .limit(limit)
            .subquery("top")
        )
        score = (
            select(AgentModelAssignment.score)
            .join(Agent, Agent.id == AgentModelAssignment.agent_id)
            .join(Model, Model.id == AgentModelAssignment.model_id)
            .where(
                Agent.name == top.c.agent_id,
                Model.name == top.c.served_model,
                AgentModelAssignment.active.is_(true()),
            )
            .order_by(AgentModelAssignment.assigned_at.desc(), AgentModelAssignment.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        stmt = select(top, score.label("assignment_score")).order_by(
            top.c.requests.desc(), top.c.agent_id, top.c.served_model
        )
        return [
            AgentModelUsage(
                agent_id=r.agent_id,
                served_model=r.served_model,
                requests=r.requests,
                success_rate=_ratio(r.successes, r.requests),
                latency_avg_ms=_float(r.latency_avg),
                cost_usd=float(r.cost_usd),
                assignment_score=_float(r.assignment_score),
            )
            for r in await self._fetch(stmt)
        ]

    async def timeseries(
        self, since: datetime, until: datetime, bucket: Bucket, model: str | None = None
    ) -> list[TimeseriesPoint]:
        """One point per bucket from the one holding ``since`` up to ``until``, gaps included."""
        if bucket not in BUCKET_WIDTHS:
            raise ValueError(f"unknown bucket {bucket!r}")
        where = _range(since, until)
        if model is not None:
            where.append(_REQUESTS.c.served_model == model)
        keys = {"bucket": self._flavor.bucket(_REQUESTS.c.created_at, bucket)}
        rows = self._flavor.rows(where, keys, ranked=("latency_ms",))
        pct = partial(self._flavor.percentile, rows)
        stmt = select(
            rows.c.bucket,
            func.count().label("requests"),
            _count_status(rows, "error").label("errors"),
            _sum(rows.c.prompt_tokens + rows.c.completion_tokens).label("tokens"),
            func.avg(rows.c.latency_ms).label("latency_avg"),
            pct("latency_ms", 0.95).label("latency_p95"),
        ).group_by(rows.c.bucket)
        found = {
            _bucket_start(r.bucket): TimeseriesPoint(
                bucket_start=_bucket_start(r.bucket),
                requests=r.requests,
                errors=int(r.errors),
                tokens=int(r.tokens),
                latency_avg_ms=_float(r.latency_avg),
                latency_p95_ms=_float(r.latency_p95),
            )
            for r in await self._fetch(stmt)
        }
        return [
            found.get(start) or TimeseriesPoint(start, 0, 0, 0, None, None)
            for start in bucket_starts(_utc(since), _utc(until), bucket)
        ]

    async def usage(
        self, since: datetime, until: datetime, group_by: GroupBy, limit: int | None = None
    ) -> list[UsageRow]:
        """Per API key, user or end user, busiest first (unattributed requests under None)."""
        if group_by not in GROUP_COLUMNS:
            raise ValueError(f"unknown group_by {group_by!r}")
        keys = {"key": _REQUESTS.c[GROUP_COLUMNS[group_by]]}
        rows = self._flavor.rows(_range(since, until), keys)
        stmt = (
            select(
                rows.c.key,
                func.count().label("requests"),
                _count_status(rows, "error").label("errors"),
                _sum(rows.c.prompt_tokens).label("prompt_tokens"),
                _sum(rows.c.completion_tokens).label("completion_tokens"),
                _sum(rows.c.cost_usd).label("cost_usd"),
            )
            .group_by(rows.c.key)
            .order_by(func.count().desc(), *_nulls_last(rows.c.key))
            .limit(limit)
        )
        return [
            UsageRow(
                key=r.key,
                requests=r.requests,
                errors=int(r.errors),
                prompt_tokens=int(r.prompt_tokens),
                completion_tokens=int(r.completion_tokens),
                cost_usd=float(r.cost_usd),
            )
            for r in await self._fetch(stmt)
        ]

    async def _fetch(self, stmt: Select[Any]) -> Sequence[Row[Any]]:
        async with self.database.engine.connect() as conn:
            result = await conn.execute(stmt)
            rows: Sequence[Row[Any]] = result.all()
        return rows


# --- helpers ---------------------------------------------------------------------------------


def bucket_starts(since: datetime, until: datetime, bucket: Bucket) -> list[datetime]:
    """The start of every bucket overlapping ``[since, until)``, in UTC (none if it is empty)."""
    width = BUCKET_WIDTHS[bucket]
    start = floor_to_bucket(_utc(since), bucket)
    end = _utc(until)
    out: list[datetime] = []
    if _utc(since) >= end:
        return out
    while start < end:
        out.append(start)
        start += width
    return out


def floor_to_bucket(moment: datetime, bucket: Bucket) -> datetime:
    """The start of the bucket holding ``moment``."""
    moment = moment.replace(second=0, microsecond=0)
    if bucket in ("hour", "day"):
        moment = moment.replace(minute=0)
    if bucket == "day":
        moment = moment.replace(hour=0)
    return moment


def _range(since: datetime, until: datetime) -> list[ColumnElement[bool]]:
    created_at = _REQUESTS.c.created_at
    return [created_at >= _utc(since), created_at < _utc(until)]


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already (SQLite binds no offset)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _count_status(rows: Subquery, status: str) -> ColumnElement[Any]:
    return _sum(case((rows.c.status == status, 1), else_=0))


def _sum(expr: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(expr), 0)


def _nulls_last(*columns: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    """The same order on every dialect: NULLs after values, then by value."""
    out: list[ColumnElement[Any]] = []
    for column in columns:
        out += [case((column.is_(None), 1), else_=0), column]
    return out


def _bucket_start(value: Any) -> datetime:
    if isinstance(value, datetime):
        return _utc(value)
    text = str(value)
    if len(text) == 10:  # a day
        text += " 00:00"
    elif len(text) == 13:  # an hour, as HANA formats it
        text += ":00"
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _ratio(part: Any, whole: Any) -> float:
    return float(part) / float(whole) if whole else 0.0


__all__ = [
    "BUCKET_WIDTHS",
    "GROUP_COLUMNS",
    "AgentModelUsage",
    "AnalyticsRepository",
    "Bucket",
    "GroupBy",
    "ModelPerformance",
    "RoutingStat",
    "TimeseriesPoint",
    "UsageRow",
    "bucket_starts",
    "floor_to_bucket",
]
