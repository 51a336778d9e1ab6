"""The analytics endpoints over a real database (SQLite and PostgreSQL), through ASGI."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import insert

from helixflow.api.admin.analytics import router
from helixflow.store.database import Database
from helixflow.store.repositories.telemetry import TelemetryRepository
from helixflow.store.schema import Agent, AgentModelAssignment, Model
from helixflow.store.telemetry.events import InferenceEvent
from tests.api.admin.harness import NOW, admin_app, asgi_client, assert_400, assert_needs_a_database

BASE = "/api/v1/analytics"

LATENCIES = [100.0, 300.0, 200.0, 400.0, 1000.0]


def event(at: datetime, **fields: Any) -> InferenceEvent:
    values: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "endpoint": "chat.completions",
        "status": "success",
        "http_status": 200,
        "latency_ms": 100.0,
        "served_model": "local-a",
    }
    values.update(fields)
    return InferenceEvent(created_at=at, **values)


def seed_events() -> list[InferenceEvent]:
    out = [
        event(
            NOW - timedelta(minutes=10 * (i + 1)),
            latency_ms=lat,
            ttft_ms=lat / 10,
            prompt_tokens=10,
            completion_tokens=100,
            status="error" if i == 4 else "success",
            api_key_id="key-1",
            user_id="alice",
            agent_id="planner",
        )
        for i, lat in enumerate(LATENCIES)
    ]
    out += [
        event(
            NOW - timedelta(minutes=5),
            served_model="gpt-x",
            provider="openai",
            latency_ms=700.0,
            prompt_tokens=50,
            completion_tokens=70,
            cost_usd=0.25,
            api_key_id="key-2",
            end_user="eu-1",
            agent_id="writer",
        ),
        # three hours ago: only in wider windows
        event(NOW - timedelta(hours=3), latency_ms=9999.0, api_key_id="key-3"),
    ]
    return out


@pytest.fixture
async def client(database: Database) -> AsyncIterator[httpx.AsyncClient]:
    await TelemetryRepository(database).insert(seed_events())
    async with database.engine.begin() as conn:
        await conn.execute(insert(Agent), [{"id": 1, "name": "planner"}])
        await conn.execute(insert(Model), [{"id": 1, "name": "local-a", "backend": "llamacpp"}])
        await conn.execute(
            insert(AgentModelAssignment),
            [{"agent_id": 1, "model_id": 1, "score": 0.75, "active": True}],
        )
    async with asgi_client(admin_app(router, database)) as http:
        yield http


async def get_ok(client: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    response = await client.get(f"{BASE}{path}", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_routing(client: httpx.AsyncClient) -> None:
    body = await get_ok(client, "/routing", window="2h")
    assert at(body["since"]) == NOW - timedelta(hours=2)
    assert at(body["until"]) == NOW
    assert [(r["served_model"], r["provider"]) for r in body["data"]] == [
        ("local-a", None),
        ("gpt-x", "openai"),
    ]
    local = body["data"][0]
    assert local["requests"] == 5
    assert local["successes"] == 4
    assert local["success_rate"] == pytest.approx(0.8)
    assert local["latency_p50_ms"] == pytest.approx(300.0)
    assert local["latency_p95_ms"] == pytest.approx(np.percentile(LATENCIES, 95))
    assert local["ttft_p50_ms"] == pytest.approx(30.0)
    assert local["prompt_tokens"] == 50
    assert local["completion_tokens"] == 500
    assert local["cost_usd"] == 0.0
    remote = body["data"][1]
    assert remote["cost_usd"] == pytest.approx(0.25)
    assert remote["ttft_p50_ms"] is None

    wide = await get_ok(client, "/routing", window="24h")
    assert wide["data"][0]["requests"] == 6
    default = await get_ok(client, "/routing")
    assert default == wide

    filtered = await get_ok(client, "/routing", window="2h", provider="openai")
    assert [r["served_model"] for r in filtered["data"]] == ["gpt-x"]
    filtered = await get_ok(client, "/routing", window="2h", model="local-a")
    assert [r["served_model"] for r in filtered["data"]] == ["local-a"]
    blank = await get_ok(client, "/routing", window="2h", model="")
    assert len(blank["data"]) == 2


async def test_explicit_range(client: httpx.AsyncClient) -> None:
    since = (NOW - timedelta(minutes=25)).isoformat()
    body = await get_ok(client, "/routing", since=since, until=NOW.isoformat())
    assert at(body["since"]) == NOW - timedelta(minutes=25)
    assert {r["served_model"]: r["requests"] for r in body["data"]} == {"local-a": 2, "gpt-x": 1}
    # '+00:00' sent unencoded arrives as ' 00:00' and is still understood
    raw = await client.get(f"{BASE}/routing?since=2024-05-01T11:35:00+00:00")
    assert raw.status_code == 200, raw.text
    assert at(raw.json()["since"]) == NOW - timedelta(minutes=25)


async def test_models(client: httpx.AsyncClient) -> None:
    body = await get_ok(client, "/models", window="2h")
    local = next(m for m in body["data"] if m["served_model"] == "local-a")
    assert local["requests"] == 5
    assert local["errors"] == 1
    assert local["error_rate"] == pytest.approx(0.2)
    assert local["latency_avg_ms"] == pytest.approx(400.0)
    assert local["latency_p95_ms"] == pytest.approx(np.percentile(LATENCIES, 95))
    assert local["ttft_p95_ms"] == pytest.approx(np.percentile(LATENCIES, 95) / 10)
    # successes: 400 tokens over 1.0 s of latency
    assert local["output_tokens_per_second"] == pytest.approx(400.0)
    assert local["prompt_tokens_avg"] == pytest.approx(10.0)
    only = await get_ok(client, "/models", window="2h", model="gpt-x")
    assert [m["served_model"] for m in only["data"]] == ["gpt-x"]


async def test_top_agents(client: httpx.AsyncClient) -> None:
    body = await get_ok(client, "/agents/top", window="2h")
    assert [(r["agent_id"], r["served_model"]) for r in body["data"]] == [
        ("planner", "local-a"),
        ("writer", "gpt-x"),
    ]
    planner, writer = body["data"]
    assert planner["requests"] == 5
    assert planner["success_rate"] == pytest.approx(0.8)
    assert planner["assignment_score"] == pytest.approx(0.75)
    assert writer["assignment_score"] is None
    assert writer["cost_usd"] == pytest.approx(0.25)
    one = await get_ok(client, "/agents/top", window="2h", limit=1)
    assert len(one["data"]) == 1


async def test_timeseries(client: httpx.AsyncClient) -> None:
    body = await get_ok(client, "/timeseries", window="1h", bucket="minute")
    assert body["bucket"] == "minute"
    points = body["data"]
    assert len(points) == 60
    assert at(points[0]["bucket_start"]) == NOW - timedelta(hours=1)
    assert at(points[-1]["bucket_start"]) == NOW - timedelta(minutes=1)
    busy = {at(p["bucket_start"]): p for p in points if p["requests"]}
    assert sorted(busy) == sorted(
        [NOW - timedelta(minutes=10 * (i + 1)) for i in range(5)] + [NOW - timedelta(minutes=5)]
    )
    assert busy[NOW - timedelta(minutes=50)]["errors"] == 1
    assert busy[NOW - timedelta(minutes=5)]["tokens"] == 120
    empty = next(p for p in points if not p["requests"])
    assert empty == {
        "bucket_start": empty["bucket_start"],
        "requests": 0,
        "errors": 0,
        "tokens": 0,
        "latency_avg_ms": None,
        "latency_p95_ms": None,
    }

    hourly = await get_ok(client, "/timeseries", window="4h")
    assert hourly["bucket"] == "hour"
    assert [p["requests"] for p in hourly["data"]] == [0, 1, 0, 6]
    assert hourly["data"][3]["latency_p95_ms"] == pytest.approx(
        np.percentile([*LATENCIES, 700.0], 95)
    )
    model = await get_ok(client, "/timeseries", window="4h", model="gpt-x")
    assert [p["requests"] for p in model["data"]] == [0, 0, 0, 1]
    daily = await get_ok(client, "/timeseries", window="90d", bucket="day")
    assert len(daily["data"]) == 91  # Feb 1 (leap year) .. May 1, partial days included
    assert daily["data"][-1]["requests"] == 7


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        ("api_key", [("key-1", 5), ("key-2", 1), ("key-3", 1)]),
        ("user", [("alice", 5), (None, 2)]),
        ("end_user", [(None, 6), ("eu-1", 1)]),
    ],
)
async def test_usage(
    client: httpx.AsyncClient, group_by: str, expected: list[tuple[str | None, int]]
) -> None:
    body = await get_ok(client, "/usage", window="24h", group_by=group_by)
    assert body["group_by"] == group_by
    assert [(r["key"], r["requests"]) for r in body["data"]] == expected


async def test_usage_figures_and_default_group(client: httpx.AsyncClient) -> None:
    body = await get_ok(client, "/usage", window="2h")
    assert body["group_by"] == "api_key"
    key1, key2 = body["data"]
    assert key1 == {
        "key": "key-1",
        "requests": 5,
        "errors": 1,
        "prompt_tokens": 50,
        "completion_tokens": 500,
        "cost_usd": 0.0,
    }
    assert key2["cost_usd"] == pytest.approx(0.25)
    limited = await get_ok(client, "/usage", window="24h", limit="1")
    assert [r["key"] for r in limited["data"]] == ["key-1"]


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/routing", {"window": "banana"}, "window"),
        ("/routing", {"window": "0h"}, "window"),
        ("/routing", {"window": "91d"}, "window"),
        ("/routing", {"window": "1h", "since": "2024-05-01T00:00:00Z"}, "window"),
        ("/routing", {"since": "not-a-date"}, "since"),
        ("/routing", {"until": "2024-02-30T00:00:00Z"}, "until"),
        ("/routing", {"since": "2024-05-01T11:00:00Z", "until": "2024-05-01T10:00:00Z"}, "since"),
        ("/routing", {"since": "2024-01-01T00:00:00Z"}, "since"),
        ("/models", {"window": "1 day"}, "window"),
        ("/agents/top", {"limit": "0"}, "limit"),
        ("/agents/top", {"limit": "1001"}, "limit"),
        ("/agents/top", {"limit": "ten"}, "limit"),
        ("/agents/top", {"limit": "1.5"}, "limit"),
        ("/timeseries", {"bucket": "week"}, "bucket"),
        ("/timeseries", {"window": "25h", "bucket": "minute"}, "bucket"),
        ("/timeseries", {"window": "61d", "bucket": "hour"}, "bucket"),
        ("/timeseries", {"window": "2h", "bucket": ""}, "bucket"),
        ("/usage", {"group_by": "team"}, "group_by"),
        ("/usage", {"group_by": "api_key", "limit": "-3"}, "limit"),
    ],
)
async def test_bad_input_is_a_400_envelope(
    client: httpx.AsyncClient, path: str, params: dict[str, str], param: str
) -> None:
    assert_400(await client.get(f"{BASE}{path}", params=params), param)


async def test_without_a_database() -> None:
    await assert_needs_a_database(router, f"{BASE}/routing")


def test_openapi_schema() -> None:
    schema = admin_app(router).openapi()
    paths = schema["paths"]
    assert set(paths) == {
        f"{BASE}/routing",
        f"{BASE}/models",
        f"{BASE}/agents/top",
        f"{BASE}/timeseries",
        f"{BASE}/usage",
    }
    assert all(set(p) == {"get"} for p in paths.values())
    params = {p["name"]: p["schema"] for p in paths[f"{BASE}/usage"]["get"]["parameters"]}
    assert params["limit"]["type"] == "integer"
    assert params["limit"]["maximum"] == 1000
    assert params["group_by"]["enum"] == ["api_key", "user", "end_user"]
    assert params["since"]["format"] == "date-time"
    series = {p["name"]: p["schema"] for p in paths[f"{BASE}/timeseries"]["get"]["parameters"]}
    assert series["bucket"]["enum"] == ["minute", "hour", "day"]
    ok = paths[f"{BASE}/timeseries"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"].endswith("/TimeseriesResponse")
    required = schema["components"]["schemas"]["TimeseriesResponse"]["required"]
    assert set(required) == {"since", "until", "bucket", "data"}
