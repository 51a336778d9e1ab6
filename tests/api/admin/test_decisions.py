"""GET /api/v1/router/decisions and /decisions/summary over a real database, through ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from helixflow.api.admin.decisions import router
from helixflow.store.database import Database
from helixflow.store.repositories.telemetry import TelemetryRepository
from tests.api.admin.harness import (
    BAD_RANGES,
    NOW,
    admin_app,
    asgi_client,
    assert_400,
    assert_needs_a_database,
)
from tests.store.factories import routing_event

URL = "/api/v1/router/decisions"
SUMMARY_URL = "/api/v1/router/decisions/summary"

ATTEMPTS = [
    {"target": "acme/gpt-4o-mini", "status": 429, "error": "rate_limited", "ms": 4.0},
    {"target": "local-a", "status": "ok", "retry": 0},
]
CANDIDATES = [{"target": "acme/gpt-4o-mini", "score": 0.8}, {"target": "local-a", "score": 0.2}]

# name: (minutes ago, fields); stored in this order, one batch each, so ids grow down the list.
DECISIONS: dict[str, tuple[float, dict[str, Any]]] = {
    "yesterday": (26 * 60, {"chosen_target": "local-a"}),
    "direct": (
        40,
        {
            "requested_model": "gpt-4o-mini",
            "strategy": "direct",
            "chosen_target": "acme/gpt-4o-mini",
            "reason": "requested",
            "decision_ms": 0.25,
        },
    ),
    "fallback": (
        30,
        {
            "requested_model": "auto",
            "strategy": "weighted",
            "candidates": CANDIDATES,
            "chosen_target": "local-a",
            "reason": "weighted: weight 3",
            "fallback_attempts": 1,
            "attempts": ATTEMPTS,
            "decision_ms": 1.5,
        },
    ),
    "failed": (
        20,
        {
            "requested_model": "auto",
            "strategy": "weighted",
            "chosen_target": None,
            "reason": "every target failed",
            "fallback_attempts": 2,
        },
    ),
    "cheap": (
        10,
        {
            "requested_model": "fast",
            "strategy": "cost",
            "chosen_target": "local-a",
            "decision_ms": 0.5,
        },
    ),
}


@pytest.fixture
async def client(database: Database) -> AsyncIterator[httpx.AsyncClient]:
    telemetry = TelemetryRepository(database)
    for i, (minutes_ago, fields) in enumerate(DECISIONS.values()):
        created_at = NOW - timedelta(minutes=minutes_ago)
        assert await telemetry.insert([routing_event(i, created_at=created_at, **fields)]) == 1
    async with asgi_client(admin_app(router, database)) as http:
        yield http


async def get_ok(client: httpx.AsyncClient, url: str = URL, **params: Any) -> dict[str, Any]:
    response = await client.get(url, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def names(body: dict[str, Any]) -> list[str]:
    by_request = {f"req-{i:06d}": name for i, name in enumerate(DECISIONS)}
    return [by_request[d["request_id"]] for d in body["data"]]


async def test_lists_the_last_day_newest_first(client: httpx.AsyncClient) -> None:
    body = await get_ok(client)
    assert datetime.fromisoformat(body["since"]) == NOW - timedelta(hours=24)
    assert datetime.fromisoformat(body["until"]) == NOW
    assert names(body) == ["cheap", "failed", "fallback", "direct"]
    assert body["next_before_id"] is None
    ids = [d["id"] for d in body["data"]]
    assert ids == sorted(ids, reverse=True)
    fallback = body["data"][2]
    assert fallback == {
        "id": fallback["id"],
        "request_id": "req-000002",
        "created_at": fallback["created_at"],
        "requested_model": "auto",
        "strategy": "weighted",
        "candidates": CANDIDATES,
        "chosen_target": "local-a",
        "reason": "weighted: weight 3",
        "fallback_attempts": 1,
        "attempts": ATTEMPTS,
        "decision_ms": 1.5,
    }
    created = datetime.fromisoformat(fallback["created_at"])
    assert created == NOW - timedelta(minutes=30)
    assert created.utcoffset() == timedelta(0)
    failed = body["data"][1]
    assert (failed["chosen_target"], failed["decision_ms"], failed["attempts"]) == (None, None, [])


async def test_ranges_and_filters(client: httpx.AsyncClient) -> None:
    assert names(await get_ok(client, window="15m")) == ["cheap"]
    assert names(await get_ok(client, window="2d")) == [
        "cheap",
        "failed",
        "fallback",
        "direct",
        "yesterday",
    ]
    since = (NOW - timedelta(minutes=35)).isoformat()
    until = (NOW - timedelta(minutes=20)).isoformat()  # exclusive
    assert names(await get_ok(client, since=since, until=until)) == ["fallback"]
    assert names(await get_ok(client, target="local-a")) == ["cheap", "fallback"]
    assert names(await get_ok(client, target="acme/gpt-4o-mini")) == ["direct"]
    assert names(await get_ok(client, model="auto")) == ["failed", "fallback"]
    assert names(await get_ok(client, strategy="direct")) == ["direct"]
    assert names(await get_ok(client, strategy="cost")) == ["cheap"]
    assert names(await get_ok(client, fallback_only="true")) == ["failed", "fallback"]
    assert names(await get_ok(client, failed_only="true")) == ["failed"]
    assert names(await get_ok(client, failed_only="1", fallback_only="yes")) == ["failed"]
    assert names(await get_ok(client, fallback_only="true", target="local-a")) == ["fallback"]
    assert names(await get_ok(client, failed_only="false", fallback_only="0")) == [
        "cheap",
        "failed",
        "fallback",
        "direct",
    ]
    assert names(await get_ok(client, model="nobody")) == []
    blank = await get_ok(
        client, target=" ", model="", strategy="", fallback_only="", failed_only="", before_id=""
    )
    assert names(blank) == ["cheap", "failed", "fallback", "direct"]


async def test_pages_with_next_before_id(client: httpx.AsyncClient) -> None:
    pages: list[list[str]] = []
    params: dict[str, Any] = {"window": "2d", "limit": "2"}
    for _ in range(10):
        body = await get_ok(client, **params)
        pages.append(names(body))
        if body["next_before_id"] is None:
            break
        assert body["next_before_id"] == body["data"][-1]["id"]
        params["before_id"] = str(body["next_before_id"])
    assert pages == [["cheap", "failed"], ["fallback", "direct"], ["yesterday"]]
    # A page that ends exactly at the last row says so: no empty page follows.
    body = await get_ok(client, window="2d", limit="5")
    assert len(body["data"]) == 5
    assert body["next_before_id"] is None
    # Filters carry across pages.
    first = await get_ok(client, target="local-a", limit="1")
    assert names(first) == ["cheap"]
    after = await get_ok(client, target="local-a", before_id=str(first["next_before_id"]))
    assert names(after) == ["fallback"]
    assert after["next_before_id"] is None


async def test_summary(client: httpx.AsyncClient) -> None:
    body = await get_ok(client, SUMMARY_URL)
    assert datetime.fromisoformat(body["since"]) == NOW - timedelta(hours=24)
    assert datetime.fromisoformat(body["until"]) == NOW
    assert body["data"] == [
        {
            "target": "local-a",
            "decisions": 2,
            "fallbacks": 1,
            "failed": 0,
            "decision_avg_ms": 1.0,
        },
        {
            "target": "acme/gpt-4o-mini",
            "decisions": 1,
            "fallbacks": 0,
            "failed": 0,
            "decision_avg_ms": 0.25,
        },
        {"target": None, "decisions": 1, "fallbacks": 1, "failed": 1, "decision_avg_ms": None},
    ]
    local = await get_ok(client, SUMMARY_URL, window="15m")
    assert [(r["target"], r["decisions"]) for r in local["data"]] == [("local-a", 1)]
    two_days = await get_ok(client, SUMMARY_URL, window="2d")
    assert two_days["data"][0]["decisions"] == 3


@pytest.mark.parametrize(
    ("params", "param"),
    [
        *BAD_RANGES,
        ({"target": "x" * 257}, "target"),
        ({"model": "m" * 257}, "model"),
        ({"strategy": "fastest"}, "strategy"),
        ({"strategy": "WEIGHTED"}, "strategy"),
        ({"fallback_only": "maybe"}, "fallback_only"),
        ({"fallback_only": "2"}, "fallback_only"),
        ({"failed_only": "yes please"}, "failed_only"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-3"}, "limit"),
        ({"before_id": "abc"}, "before_id"),
        ({"before_id": "0"}, "before_id"),
        ({"before_id": "-5"}, "before_id"),
        ({"before_id": "1.5"}, "before_id"),
        ({"before_id": str(2**63)}, "before_id"),
    ],
)
async def test_bad_input_is_a_400_envelope(
    client: httpx.AsyncClient, params: dict[str, str], param: str
) -> None:
    response = await client.get(URL, params=params)
    assert_400(response, param)


@pytest.mark.parametrize(("params", "param"), BAD_RANGES)
async def test_bad_summary_range_is_a_400_envelope(
    client: httpx.AsyncClient, params: dict[str, str], param: str
) -> None:
    response = await client.get(SUMMARY_URL, params=params)
    assert_400(response, param)


@pytest.mark.parametrize("url", [URL, SUMMARY_URL])
async def test_without_a_database(url: str) -> None:
    await assert_needs_a_database(router, url)


def test_openapi_schema() -> None:
    schema = admin_app(router).openapi()
    assert set(schema["paths"]) == {URL, SUMMARY_URL}
    operation = schema["paths"][URL]["get"]
    assert operation["tags"] == ["router"]
    params = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert set(params) == {
        "window",
        "since",
        "until",
        "target",
        "model",
        "strategy",
        "fallback_only",
        "failed_only",
        "limit",
        "before_id",
    }
    assert "direct" in params["strategy"]["enum"]
    assert "weighted" in params["strategy"]["enum"]
    assert params["fallback_only"]["type"] == params["failed_only"]["type"] == "boolean"
    assert (params["limit"]["minimum"], params["limit"]["maximum"]) == (1, 1000)
    assert params["before_id"]["type"] == "integer"
    summary = schema["paths"][SUMMARY_URL]["get"]
    assert {p["name"] for p in summary["parameters"]} == {"window", "since", "until"}
