"""GET /api/v1/router/alerts over a real database (SQLite and PostgreSQL), through ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from helixflow.api.admin.alerts import router
from helixflow.store.database import Database
from helixflow.store.repositories.alerts import AlertRecord, AlertRepository
from tests.api.admin.harness import (
    BAD_RANGES,
    NOW,
    admin_app,
    asgi_client,
    assert_400,
    assert_needs_a_database,
)

URL = "/api/v1/router/alerts"


def alert(minutes_ago: float, **fields: Any) -> AlertRecord:
    values: dict[str, Any] = {
        "rule": "error_rate",
        "target": "acme/gpt-4o-mini",
        "severity": "warning",
        "value": 0.3,
        "threshold": 0.2,
        "message": "error rate of acme/gpt-4o-mini is 30.0%",
        "details": {"requests": 30, "errors": 9},
        "created_at": NOW - timedelta(minutes=minutes_ago),
    }
    values.update(fields)
    return AlertRecord(**values)


@pytest.fixture
async def ids(database: Database) -> dict[str, int]:
    repo = AlertRepository(database)
    out = {
        "errors": await repo.add(alert(10)),
        "slow": await repo.add(
            alert(
                20,
                rule="latency_p95",
                target="local-a",
                severity="critical",
                value=65_000.0,
                threshold=30_000.0,
                message="latency p95 of local-a is 65000 ms",
                details={"requests": 25, "errors": 0},
            )
        ),
        "circuits": await repo.add(
            alert(
                30,
                rule="open_circuits",
                target=None,
                value=1.0,
                threshold=1.0,
                message="1 of 2 circuits open (threshold 1): acme/gpt-4o-mini",
                details={"targets": ["acme/gpt-4o-mini"], "half_open": [], "total": 2},
            )
        ),
        "yesterday": await repo.add(alert(26 * 60)),
    }
    await repo.resolve(out["circuits"], NOW - timedelta(minutes=5))
    return out


@pytest.fixture
async def client(database: Database, ids: dict[str, int]) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(admin_app(router, database)) as http:
        yield http


async def get_ok(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get(URL, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def names(body: dict[str, Any], ids: dict[str, int]) -> list[str]:
    by_id = {v: k for k, v in ids.items()}
    return [by_id[a["id"]] for a in body["alerts"]]


async def test_lists_the_last_day_newest_first(
    client: httpx.AsyncClient, ids: dict[str, int]
) -> None:
    body = await get_ok(client)
    assert datetime.fromisoformat(body["since"]) == NOW - timedelta(hours=24)
    assert datetime.fromisoformat(body["until"]) == NOW
    assert names(body, ids) == ["errors", "slow", "circuits"]
    errors, _, circuits = body["alerts"]
    assert errors == {
        "id": ids["errors"],
        "created_at": errors["created_at"],
        "rule": "error_rate",
        "target": "acme/gpt-4o-mini",
        "severity": "warning",
        "state": "firing",
        "value": 0.3,
        "threshold": 0.2,
        "message": "error rate of acme/gpt-4o-mini is 30.0%",
        "details": {"requests": 30, "errors": 9},
        "resolved_at": None,
    }
    assert datetime.fromisoformat(errors["created_at"]) == NOW - timedelta(minutes=10)
    assert circuits["target"] is None
    assert circuits["state"] == "resolved"
    assert datetime.fromisoformat(circuits["resolved_at"]) == NOW - timedelta(minutes=5)
    assert circuits["details"]["targets"] == ["acme/gpt-4o-mini"]


async def test_ranges_filters_and_limit(client: httpx.AsyncClient, ids: dict[str, int]) -> None:
    assert names(await get_ok(client, window="15m"), ids) == ["errors"]
    assert names(await get_ok(client, window="2d"), ids) == [
        "errors",
        "slow",
        "circuits",
        "yesterday",
    ]
    since = (NOW - timedelta(minutes=25)).isoformat()
    until = (NOW - timedelta(minutes=10)).isoformat()  # exclusive
    assert names(await get_ok(client, since=since, until=until), ids) == ["slow"]
    assert names(await get_ok(client, rule="latency_p95"), ids) == ["slow"]
    assert names(await get_ok(client, target="acme/gpt-4o-mini"), ids) == ["errors"]
    assert names(await get_ok(client, state="resolved"), ids) == ["circuits"]
    assert names(await get_ok(client, state="firing"), ids) == ["errors", "slow"]
    assert names(await get_ok(client, rule="error_rate", state="resolved"), ids) == []
    assert names(await get_ok(client, limit="2"), ids) == ["errors", "slow"]
    assert names(await get_ok(client, rule="", target=" ", state=""), ids) == [
        "errors",
        "slow",
        "circuits",
    ]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        *BAD_RANGES,
        ({"rule": "cpu"}, "rule"),
        ({"state": "open"}, "state"),
        ({"state": "FIRING"}, "state"),
        ({"target": "x" * 257}, "target"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-3"}, "limit"),
    ],
)
async def test_bad_input_is_a_400_envelope(
    client: httpx.AsyncClient, params: dict[str, str], param: str
) -> None:
    assert_400(await client.get(URL, params=params), param)


async def test_without_a_database() -> None:
    await assert_needs_a_database(router, URL)


def test_openapi_schema() -> None:
    schema = admin_app(router).openapi()
    assert set(schema["paths"]) == {URL}
    operation = schema["paths"][URL]["get"]
    assert operation["tags"] == ["router"]
    params = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert set(params) == {"window", "since", "until", "rule", "target", "state", "limit"}
    assert params["rule"]["enum"] == ["error_rate", "latency_p95", "open_circuits"]
    assert params["state"]["enum"] == ["firing", "resolved"]
    assert (params["limit"]["minimum"], params["limit"]["maximum"]) == (1, 1000)
