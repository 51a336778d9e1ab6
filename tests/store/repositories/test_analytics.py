"""AnalyticsRepository against real SQLite and PostgreSQL: figures, percentiles, ranges, filters."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from sqlalchemy import insert

from helixflow.store.database import Database
from helixflow.store.repositories.analytics import (
    AnalyticsRepository,
    bucket_starts,
    floor_to_bucket,
)
from helixflow.store.repositories.telemetry import TelemetryRepository
from helixflow.store.schema import Agent, AgentModelAssignment, Model
from helixflow.store.telemetry.events import InferenceEvent

T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
SINCE = T0
UNTIL = T0 + timedelta(hours=1)


def event(offset_s: float, **fields: Any) -> InferenceEvent:
    values: dict[str, Any] = {
        "endpoint": "chat.completions",
        "status": "success",
        "http_status": 200,
        "latency_ms": 100.0,
    }
    values.update(fields)
    values.setdefault("request_id", uuid.uuid4().hex)
    if values["status"] != "success":
        values["http_status"] = fields.get("http_status", 500)
    return InferenceEvent(created_at=T0 + timedelta(seconds=offset_s), **values)


def pct(values: Sequence[float], p: float) -> float:
    return float(np.percentile(np.array(values, dtype=float), p * 100))


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-9)


# The main data set: two models (one local, one behind a provider) inside [SINCE, UNTIL), plus
# rows on and around the range's edges.
LOCAL_LATENCIES = [120.0, 80.0, 200.0, 95.5, 300.0, 150.0, 110.0]
LOCAL_TTFTS = [10.0, 8.0, None, 12.5, 30.0, None, 9.0]
LOCAL_STATUS = ["success", "success", "error", "success", "cancelled", "success", "success"]
REMOTE_LATENCIES = [400.0, 250.0, 500.0, 900.0]
REMOTE_TTFTS = [50.0, 40.0, 45.0, 70.0]
REMOTE_STATUS = ["success", "error", "success", "success"]


def main_events() -> list[InferenceEvent]:
    out = []
    for i, (lat, ttft, status) in enumerate(
        zip(LOCAL_LATENCIES, LOCAL_TTFTS, LOCAL_STATUS, strict=True)
    ):
        out.append(
            event(
                60 * i,  # one per minute from SINCE
                served_model="local-a",
                status=status,
                latency_ms=lat,
                ttft_ms=ttft,
                prompt_tokens=10 + i,
                completion_tokens=20 * (i + 1),
                cost_usd=0.0,
                api_key_id="key-1" if i % 2 == 0 else "key-2",
                user_id="alice",
                end_user=None if i == 0 else f"eu-{i % 3}",
                agent_id="planner" if i < 5 else None,
            )
        )
    for i, (lat, ttft, status) in enumerate(
        zip(REMOTE_LATENCIES, REMOTE_TTFTS, REMOTE_STATUS, strict=True)
    ):
        out.append(
            event(
                1800 + 30 * i,
                served_model="gpt-x",
                provider="openai",
                status=status,
                latency_ms=lat,
                ttft_ms=ttft,
                prompt_tokens=100,
                completion_tokens=50 * (i + 1),
                cost_usd=0.001 * (i + 1),
                api_key_id="key-2",
                user_id="bob" if i < 3 else None,
                end_user="eu-1",
                agent_id="planner" if i < 2 else "writer",
            )
        )
    # Outside the range: before SINCE, exactly at UNTIL (excluded), after.
    out.append(event(-1, served_model="local-a", latency_ms=5000.0, api_key_id="key-1"))
    out.append(event(3600, served_model="gpt-x", provider="openai", latency_ms=5000.0))
    out.append(event(7200, served_model="local-a", latency_ms=5000.0, agent_id="planner"))
    return out


async def seed(db: Database, events: Sequence[InferenceEvent]) -> AnalyticsRepository:
    await TelemetryRepository(db).insert(list(events))
    return AnalyticsRepository(db)


@pytest.fixture
async def repo(database: Database) -> AnalyticsRepository:
    return await seed(database, main_events())


# --- routing_stats ---------------------------------------------------------------------------


async def test_routing_stats_figures(repo: AnalyticsRepository) -> None:
    stats = await repo.routing_stats(SINCE, UNTIL)
    assert [(s.served_model, s.provider) for s in stats] == [("local-a", None), ("gpt-x", "openai")]
    local, remote = stats

    assert local.requests == 7
    assert local.successes == 5
    assert local.success_rate == approx(5 / 7)
    assert local.latency_p50_ms == approx(pct(LOCAL_LATENCIES, 0.5))
    assert local.latency_p50_ms == approx(120.0)
    assert local.latency_p95_ms == approx(pct(LOCAL_LATENCIES, 0.95))
    assert local.ttft_p50_ms == approx(pct([t for t in LOCAL_TTFTS if t is not None], 0.5))
    assert local.ttft_p50_ms == approx(10.0)
    assert local.prompt_tokens == sum(10 + i for i in range(7))
    assert local.completion_tokens == sum(20 * (i + 1) for i in range(7))
    assert local.cost_usd == 0.0

    assert remote.requests == 4
    assert remote.successes == 3
    assert remote.success_rate == approx(0.75)
    # 250, 400, 500, 900: p50 halfway between 400 and 500; p95 at 0.85 between 500 and 900
    assert remote.latency_p50_ms == approx(450.0)
    assert remote.latency_p95_ms == approx(500.0 + 0.85 * 400.0)
    assert remote.ttft_p50_ms == approx(47.5)
    assert remote.prompt_tokens == 400
    assert remote.completion_tokens == 500
    assert remote.cost_usd == approx(0.010)


async def test_routing_stats_filters(repo: AnalyticsRepository) -> None:
    only_model = await repo.routing_stats(SINCE, UNTIL, model="gpt-x")
    assert [s.served_model for s in only_model] == ["gpt-x"]
    only_provider = await repo.routing_stats(SINCE, UNTIL, provider="openai")
    assert [s.provider for s in only_provider] == ["openai"]
    assert only_provider[0].requests == 4
    assert await repo.routing_stats(SINCE, UNTIL, model="local-a", provider="openai") == []
    assert await repo.routing_stats(SINCE, UNTIL, model="no-such-model") == []


async def test_range_is_half_open(repo: AnalyticsRepository) -> None:
    # [SINCE - 1s, UNTIL + 1s) adds the row one second early and the one exactly at UNTIL.
    wider = await repo.routing_stats(SINCE - timedelta(seconds=1), UNTIL + timedelta(seconds=1))
    counts = {s.served_model: s.requests for s in wider}
    assert counts == {"local-a": 8, "gpt-x": 5}
    # The first minute only: the first local request (at SINCE itself).
    first = await repo.routing_stats(SINCE, SINCE + timedelta(minutes=1))
    assert [(s.served_model, s.requests) for s in first] == [("local-a", 1)]
    assert first[0].latency_p50_ms == approx(120.0)
    assert await repo.routing_stats(UNTIL + timedelta(hours=5), UNTIL + timedelta(hours=6)) == []


async def test_aware_non_utc_and_naive_bounds(repo: AnalyticsRepository) -> None:
    plus2 = timezone(timedelta(hours=2))
    aware = await repo.routing_stats(SINCE.astimezone(plus2), UNTIL.astimezone(plus2))
    naive = await repo.routing_stats(SINCE.replace(tzinfo=None), UNTIL.replace(tzinfo=None))
    reference = await repo.routing_stats(SINCE, UNTIL)
    assert aware == reference
    assert naive == reference


# --- model_performance -----------------------------------------------------------------------


async def test_model_performance_figures(repo: AnalyticsRepository) -> None:
    perf = {p.served_model: p for p in await repo.model_performance(SINCE, UNTIL)}
    assert set(perf) == {"local-a", "gpt-x"}
    local = perf["local-a"]
    ttfts = [t for t in LOCAL_TTFTS if t is not None]
    assert local.requests == 7
    assert local.errors == 1  # "cancelled" is not an error
    assert local.error_rate == approx(1 / 7)
    assert local.latency_avg_ms == approx(sum(LOCAL_LATENCIES) / 7)
    assert local.latency_p50_ms == approx(pct(LOCAL_LATENCIES, 0.5))
    assert local.latency_p95_ms == approx(pct(LOCAL_LATENCIES, 0.95))
    assert local.ttft_avg_ms == approx(sum(ttfts) / len(ttfts))
    assert local.ttft_p50_ms == approx(pct(ttfts, 0.5))
    assert local.ttft_p95_ms == approx(pct(ttfts, 0.95))
    ok = [i for i, s in enumerate(LOCAL_STATUS) if s == "success"]
    tokens = sum(20 * (i + 1) for i in ok)
    seconds = sum(LOCAL_LATENCIES[i] for i in ok) / 1000
    assert local.output_tokens_per_second == approx(tokens / seconds)
    assert local.prompt_tokens_avg == approx(sum(10 + i for i in range(7)) / 7)
    assert local.completion_tokens_avg == approx(sum(20 * (i + 1) for i in range(7)) / 7)

    remote = perf["gpt-x"]
    assert remote.errors == 1
    assert remote.error_rate == approx(0.25)
    # successes: 400 ms/50 tokens, 500 ms/150 tokens, 900 ms/200 tokens
    assert remote.output_tokens_per_second == approx(400 / 1.8)


async def test_model_performance_filter_and_missing_values(database: Database) -> None:
    repo = await seed(
        database,
        [
            event(1, served_model="m", status="error", latency_ms=10.0, ttft_ms=None),
            event(2, served_model="m", status="error", latency_ms=30.0, ttft_ms=None),
            event(3, served_model="other", latency_ms=10.0),
            event(4, served_model=None, latency_ms=1.0),  # never routed: left out
        ],
    )
    perf = await repo.model_performance(SINCE, UNTIL, model="m")
    assert len(perf) == 1
    (m,) = perf
    assert m.requests == 2
    assert m.error_rate == 1.0
    assert m.latency_p50_ms == approx(20.0)
    assert m.ttft_avg_ms is None
    assert m.ttft_p50_ms is None
    assert m.ttft_p95_ms is None
    assert m.output_tokens_per_second is None
    assert {p.served_model for p in await repo.model_performance(SINCE, UNTIL)} == {"m", "other"}


@pytest.mark.parametrize("seed_value", [1, 2])
async def test_percentiles_equal_numpy(database: Database, seed_value: int) -> None:
    """Many group sizes (odd, even, one value, ties): both dialects agree with numpy."""
    rng = random.Random(seed_value)
    sizes = [1, 2, 3, 4, 5, 7, 10, 20, 21, 64, 101]
    samples: dict[str, list[float]] = {}
    ttft_samples: dict[str, list[float]] = {}
    events = []
    for n in sizes:
        name = f"model-{n:03d}"
        values = [round(rng.uniform(1, 5000), 3) for _ in range(n)]
        if n > 4:
            values[1] = values[0]  # ties
        ttfts = [rng.choice([None, round(rng.uniform(1, 100), 2)]) for _ in range(n)]
        samples[name] = values
        ttft_samples[name] = [t for t in ttfts if t is not None]
        for value, ttft in zip(values, ttfts, strict=True):
            events.append(
                event(rng.uniform(0, 3599), served_model=name, latency_ms=value, ttft_ms=ttft)
            )
    repo = await seed(database, events)
    perf = {p.served_model: p for p in await repo.model_performance(SINCE, UNTIL)}
    routing = {s.served_model: s for s in await repo.routing_stats(SINCE, UNTIL)}
    for name, values in samples.items():
        assert perf[name].latency_p50_ms == approx(pct(values, 0.5)), name
        assert perf[name].latency_p95_ms == approx(pct(values, 0.95)), name
        assert routing[name].latency_p95_ms == approx(pct(values, 0.95)), name
        ttfts = ttft_samples[name]
        expected_ttft = pct(ttfts, 0.95) if ttfts else None
        assert perf[name].ttft_p95_ms == (approx(expected_ttft) if ttfts else None), name
        assert routing[name].ttft_p50_ms == (approx(pct(ttfts, 0.5)) if ttfts else None), name


# --- top_agent_models ------------------------------------------------------------------------


async def add_assignments(db: Database) -> None:
    async with db.engine.begin() as conn:
        agents = {"planner": 1, "writer": 2}
        models = {"local-a": 1, "gpt-x": 2}
        await conn.execute(insert(Agent), [{"id": i, "name": n} for n, i in agents.items()])
        await conn.execute(
            insert(Model), [{"id": i, "name": n, "backend": "llamacpp"} for n, i in models.items()]
        )
        await conn.execute(
            insert(AgentModelAssignment),
            [
                # planner -> local-a: an old inactive score and the active one
                {"agent_id": 1, "model_id": 1, "score": 0.25, "active": False, "assigned_at": T0},
                {
                    "agent_id": 1,
                    "model_id": 1,
                    "score": 0.875,
                    "active": True,
                    "assigned_at": T0 + timedelta(minutes=5),
                },
                # writer -> gpt-x: inactive only
                {"agent_id": 2, "model_id": 2, "score": 0.5, "active": False, "assigned_at": T0},
            ],
        )


async def test_top_agent_models(database: Database, repo: AnalyticsRepository) -> None:
    await add_assignments(database)
    top = await repo.top_agent_models(SINCE, UNTIL, limit=10)
    assert [(t.agent_id, t.served_model, t.requests) for t in top] == [
        ("planner", "local-a", 5),
        ("planner", "gpt-x", 2),
        ("writer", "gpt-x", 2),
    ]
    planner_local, planner_remote, writer = top
    assert planner_local.success_rate == approx(3 / 5)
    assert planner_local.latency_avg_ms == approx(sum(LOCAL_LATENCIES[:5]) / 5)
    assert planner_local.cost_usd == 0.0
    assert planner_local.assignment_score == approx(0.875)
    assert planner_remote.success_rate == approx(0.5)
    assert planner_remote.cost_usd == approx(0.003)
    assert planner_remote.assignment_score is None  # no assignment to that model
    assert writer.latency_avg_ms == approx((500.0 + 900.0) / 2)
    assert writer.assignment_score is None  # only an inactive one

    assert [(t.agent_id, t.served_model) for t in await repo.top_agent_models(SINCE, UNTIL, 1)] == [
        ("planner", "local-a")
    ]


async def test_top_agent_models_without_registry_rows(repo: AnalyticsRepository) -> None:
    top = await repo.top_agent_models(SINCE, UNTIL, limit=2)
    assert [(t.agent_id, t.served_model) for t in top] == [
        ("planner", "local-a"),
        ("planner", "gpt-x"),
    ]
    assert all(t.assignment_score is None for t in top)


# --- timeseries ------------------------------------------------------------------------------


async def test_timeseries_by_minute(repo: AnalyticsRepository) -> None:
    since = SINCE + timedelta(seconds=30)  # unaligned: the first bucket starts at SINCE
    until = SINCE + timedelta(minutes=10)
    points = await repo.timeseries(since, until, "minute")
    assert [p.bucket_start for p in points] == [SINCE + timedelta(minutes=i) for i in range(10)]
    assert all(p.bucket_start.tzinfo is not None for p in points)
    by_minute = {int((p.bucket_start - SINCE).total_seconds() // 60): p for p in points}
    # The request at SINCE is before `since`: minute 0 is empty, and so are 7, 8 and 9.
    for empty in (0, 7, 8, 9):
        point = by_minute[empty]
        assert (point.requests, point.errors, point.tokens) == (0, 0, 0)
        assert point.latency_avg_ms is None
        assert point.latency_p95_ms is None
    for i in range(1, 7):
        point = by_minute[i]
        assert point.requests == 1
        assert point.errors == (1 if LOCAL_STATUS[i] == "error" else 0)
        assert point.tokens == (10 + i) + 20 * (i + 1)
        assert point.latency_avg_ms == approx(LOCAL_LATENCIES[i])
        assert point.latency_p95_ms == approx(LOCAL_LATENCIES[i])


async def test_timeseries_by_hour_and_model(repo: AnalyticsRepository) -> None:
    since = SINCE - timedelta(hours=1)
    until = UNTIL + timedelta(hours=2)  # 09:00 .. 13:00 exclusive
    points = await repo.timeseries(since, until, "hour")
    assert [p.bucket_start for p in points] == [since + timedelta(hours=i) for i in range(4)]
    nine, ten, eleven, twelve = points
    assert nine.requests == 1  # 09:59:59
    assert nine.latency_p95_ms == approx(5000.0)
    assert ten.requests == 11
    assert ten.errors == 2
    assert ten.latency_avg_ms == approx((sum(LOCAL_LATENCIES) + sum(REMOTE_LATENCIES)) / 11)
    assert ten.latency_p95_ms == approx(pct(LOCAL_LATENCIES + REMOTE_LATENCIES, 0.95))
    assert eleven.requests == 1  # the row exactly at UNTIL
    assert twelve.requests == 1
    assert ten.tokens == sum(10 + i + 20 * (i + 1) for i in range(7)) + 400 + 500

    remote = await repo.timeseries(SINCE, UNTIL, "hour", model="gpt-x")
    assert [(p.requests, p.errors) for p in remote] == [(4, 1)]
    assert remote[0].latency_p95_ms == approx(pct(REMOTE_LATENCIES, 0.95))


async def test_timeseries_by_day(repo: AnalyticsRepository) -> None:
    start = datetime(2024, 4, 30, 12, tzinfo=UTC)
    points = await repo.timeseries(start, start + timedelta(days=2), "day")
    assert [p.bucket_start for p in points] == [
        datetime(2024, 4, 30, tzinfo=UTC),
        datetime(2024, 5, 1, tzinfo=UTC),
        datetime(2024, 5, 2, tzinfo=UTC),
    ]
    assert [p.requests for p in points] == [0, 14, 0]


async def test_timeseries_rejects_unknown_bucket(repo: AnalyticsRepository) -> None:
    with pytest.raises(ValueError, match="bucket"):
        await repo.timeseries(SINCE, UNTIL, "week")  # type: ignore[arg-type]


def test_bucket_helpers() -> None:
    moment = datetime(2024, 5, 1, 10, 37, 12, 345, tzinfo=UTC)
    assert floor_to_bucket(moment, "minute") == datetime(2024, 5, 1, 10, 37, tzinfo=UTC)
    assert floor_to_bucket(moment, "hour") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert floor_to_bucket(moment, "day") == datetime(2024, 5, 1, tzinfo=UTC)
    assert bucket_starts(moment, moment, "minute") == []
    assert len(bucket_starts(SINCE, SINCE + timedelta(hours=24), "minute")) == 1440
    assert len(bucket_starts(moment, moment + timedelta(hours=24), "minute")) == 1441


# --- usage -----------------------------------------------------------------------------------


Key = Callable[[InferenceEvent], str | None]


@pytest.mark.parametrize(
    ("group_by", "key"),
    [
        ("api_key", lambda e: e.api_key_id),
        ("user", lambda e: e.user_id),
        ("end_user", lambda e: e.end_user),
    ],
)
async def test_usage(database: Database, group_by: str, key: Key) -> None:
    events = main_events()
    repo = await seed(database, events)
    inside = [e for e in events if SINCE <= e.created_at < UNTIL]
    expected: dict[str | None, dict[str, float]] = {}
    for e in inside:
        row = expected.setdefault(
            key(e), {"requests": 0, "errors": 0, "prompt": 0, "completion": 0, "cost": 0.0}
        )
        row["requests"] += 1
        row["errors"] += e.status == "error"
        row["prompt"] += e.prompt_tokens
        row["completion"] += e.completion_tokens
        row["cost"] += e.cost_usd
    rows = await repo.usage(SINCE, UNTIL, group_by)  # type: ignore[arg-type]
    assert {r.key for r in rows} == set(expected)
    for r in rows:
        want = expected[r.key]
        assert r.requests == want["requests"]
        assert r.errors == want["errors"]
        assert r.prompt_tokens == want["prompt"]
        assert r.completion_tokens == want["completion"]
        assert r.cost_usd == approx(want["cost"])
    # busiest first, then by key, unattributed last among equals
    order = sorted(expected, key=lambda k: (-expected[k]["requests"], k is None, k or ""))
    assert [r.key for r in rows] == order
    assert [r.key for r in await repo.usage(SINCE, UNTIL, group_by, limit=1)] == order[:1]  # type: ignore[arg-type]


async def test_usage_by_api_key_hand_computed(repo: AnalyticsRepository) -> None:
    rows = await repo.usage(SINCE, UNTIL, "api_key")
    assert [(r.key, r.requests, r.errors) for r in rows] == [("key-2", 7, 1), ("key-1", 4, 1)]
    key2 = rows[0]
    assert key2.cost_usd == approx(0.010)
    assert key2.prompt_tokens == 11 + 13 + 15 + 400


async def test_usage_rejects_unknown_group(repo: AnalyticsRepository) -> None:
    with pytest.raises(ValueError, match="group_by"):
        await repo.usage(SINCE, UNTIL, "team")  # type: ignore[arg-type]


async def test_empty_database(database: Database) -> None:
    repo = AnalyticsRepository(database)
    assert await repo.routing_stats(SINCE, UNTIL) == []
    assert await repo.model_performance(SINCE, UNTIL) == []
    assert await repo.top_agent_models(SINCE, UNTIL, 10) == []
    assert await repo.usage(SINCE, UNTIL, "user") == []
    points = await repo.timeseries(SINCE, UNTIL, "minute")
    assert len(points) == 60
    assert all(p.requests == 0 for p in points)
