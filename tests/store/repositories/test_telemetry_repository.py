"""TelemetryRepository.insert on SQLite and PostgreSQL: idempotent on request id, one
transaction, the count of new rows, strings cut to their column, every value stored as given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from helixflow.store.database import Database
from helixflow.store.repositories.telemetry import TelemetryRepository
from helixflow.store.schema import InferenceRequest, RoutingDecision, table_of
from helixflow.store.telemetry.events import InferenceEvent, RoutingEvent, TelemetryEvent

REQUESTS = table_of(InferenceRequest)
ROUTING = table_of(RoutingDecision)
T0 = datetime(2025, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)


def inference(i: int, **overrides: Any) -> InferenceEvent:
    values: dict[str, Any] = {
        "request_id": f"req-{i:06d}",
        "created_at": T0 + timedelta(milliseconds=i),
        "endpoint": "chat.completions",
        "status": "success",
        "http_status": 200,
        "latency_ms": 100.0 + i,
        "served_model": "smollm2-135m",
        "prompt_tokens": i,
        "completion_tokens": 2 * i,
    }
    return InferenceEvent(**(values | overrides))


def routing(i: int, **overrides: Any) -> RoutingEvent:
    values: dict[str, Any] = {
        "request_id": f"req-{i:06d}",
        "created_at": T0 + timedelta(milliseconds=i),
        "strategy": "cost",
        "chosen_target": "local/smollm2-135m",
    }
    return RoutingEvent(**(values | overrides))


async def select_rows(db: Database, table: sa.Table) -> dict[str, dict[str, Any]]:
    """Every row of ``table`` by request id, without the surrogate key."""
    async with db.engine.connect() as conn:
        result = await conn.execute(sa.select(table).order_by(table.c.id))
        rows = [dict(row._mapping) for row in result]
    for row in rows:
        del row["id"]
    return {row["request_id"]: row for row in rows}


async def count(db: Database, table: sa.Table) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar())


def as_utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were stored in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def assert_stored(stored: dict[str, Any], event: TelemetryEvent) -> None:
    """Every column of ``stored`` equals the event's value (``row()``: strings already cut)."""
    expected = event.row()
    assert set(stored) == set(expected)
    for name, value in expected.items():
        got = stored[name]
        if isinstance(value, datetime):
            assert as_utc(got) == value, name
        else:
            assert got == value, name
            if isinstance(value, bool | str):  # numbers: SQLite may hand 0.0 back as 0
                assert type(got) is type(value), name


async def test_a_batch_inserted_twice_is_stored_once(database: Database) -> None:
    repo = TelemetryRepository(database)
    batch = [inference(i) for i in range(50)]
    assert await repo.insert(batch) == 50
    assert await repo.insert(batch) == 0
    assert await count(database, REQUESTS) == 50
    # Overlapping a stored batch: only the new ids count and are stored.
    assert await repo.insert([inference(i) for i in range(40, 60)]) == 10
    assert sorted(await select_rows(database, REQUESTS)) == [f"req-{i:06d}" for i in range(60)]


async def test_a_request_id_twice_in_one_batch_keeps_the_first(database: Database) -> None:
    repo = TelemetryRepository(database)
    first = inference(1, status="success", http_status=200)
    second = inference(1, status="error", http_status=500, error_type="server_error")
    assert await repo.insert([first, inference(2), second, inference(2)]) == 2
    stored = await select_rows(database, REQUESTS)
    assert sorted(stored) == ["req-000001", "req-000002"]
    assert_stored(stored["req-000001"], first)


async def test_mixed_kinds_in_one_batch(database: Database) -> None:
    """A request's routing decision shares its request id with its inference row."""
    repo = TelemetryRepository(database)
    batch: list[TelemetryEvent] = []
    for i in range(10):
        batch += [routing(i), inference(i)]
    batch.append(routing(3))  # a duplicate of one kind only
    assert await repo.insert(batch) == 20
    assert await repo.insert(batch) == 0
    assert await repo.insert([inference(10), routing(3), routing(11)]) == 2
    assert await count(database, REQUESTS) == 11
    assert await count(database, ROUTING) == 11


async def test_strings_longer_than_their_column_are_cut(database: Database) -> None:
    repo = TelemetryRepository(database)
    limits = {c.name: c.type.length for c in REQUESTS.columns if isinstance(c.type, sa.String)}
    long = inference(
        1,
        end_user="u" * 1000,
        served_model="m" * 300,
        finish_reason="f" * 40,
        error_code="é" * 65,  # characters, not bytes
        status="s" * 17,
    )
    decision = routing(1, reason="r" * 5000, strategy="x" * 65)
    assert await repo.insert([long, decision]) == 2
    stored = (await select_rows(database, REQUESTS))["req-000001"]
    assert stored["end_user"] == "u" * limits["end_user"]
    assert stored["served_model"] == "m" * limits["served_model"]
    assert stored["finish_reason"] == "f" * limits["finish_reason"]
    assert stored["error_code"] == "é" * limits["error_code"]
    assert stored["status"] == "s" * limits["status"]
    assert_stored(stored, long)
    stored_decision = (await select_rows(database, ROUTING))["req-000001"]
    assert stored_decision["reason"] == "r" * 1024
    assert stored_decision["strategy"] == "x" * 64


async def test_every_column_round_trips(database: Database) -> None:
    repo = TelemetryRepository(database)
    full = InferenceEvent(
        request_id="0f3c2a9e8b7d4c6a9e1f2b3c4d5e6f70",
        created_at=T0,
        endpoint="chat.completions",
        status="success",
        http_status=200,
        latency_ms=1234.567,
        client_request_id="client-7",
        api_key_id="key_0042",
        user_id="user_00017",
        end_user="customer-9@example.com",
        agent_id="planner",
        requested_model="auto",
        served_model="gpt-4o-mini-2024-07-18",
        provider="openai",
        error_type=None,
        error_code=None,
        finish_reason="length",
        prompt_tokens=1500,
        completion_tokens=256,
        cached_tokens=1024,
        ttft_ms=87.125,
        cost_usd=0.0003789125,
        cache_hit=True,
        streamed=True,
        experiment_id="exp-3",
        experiment_arm="treatment",
    )
    failed = InferenceEvent(
        request_id="req-failed",
        created_at=T0 + timedelta(seconds=1),
        endpoint="embeddings",
        status="error",
        http_status=429,
        latency_ms=0.5,
        error_type="rate_limit_error",
        error_code="rate_limited",
    )
    decision = RoutingEvent(
        request_id=full.request_id,
        created_at=T0,
        requested_model="auto",
        strategy="cost",
        candidates=[{"target": "openai/gpt-4o-mini", "score": 0.91}, {"target": "local"}],
        chosen_target="openai/gpt-4o-mini",
        reason="cheapest healthy target",
        fallback_attempts=1,
        attempts=[{"target": "local", "error": "overloaded", "ms": 3.5}],
        decision_ms=0.25,
    )
    bare = RoutingEvent(request_id="req-failed", created_at=T0, strategy="fixed")
    assert await repo.insert([full, failed, decision, bare]) == 4
    stored = await select_rows(database, REQUESTS)
    assert_stored(stored[full.request_id], full)
    assert_stored(stored["req-failed"], failed)
    decisions = await select_rows(database, ROUTING)
    assert_stored(decisions[full.request_id], decision)
    assert_stored(decisions["req-failed"], bare)


async def test_a_large_batch_in_one_call(database: Database) -> None:
    """More rows x columns than one statement may have parameters (PostgreSQL: 32,767)."""
    repo = TelemetryRepository(database)
    batch = [inference(i) for i in range(2500)]
    assert await repo.insert(batch) == 2500
    assert await repo.insert(batch[::2]) == 0
    assert await count(database, REQUESTS) == 2500


async def test_a_refused_row_rolls_back_the_whole_batch(database: Database) -> None:
    """One transaction: a row the database refuses stores nothing of its batch."""
    repo = TelemetryRepository(database)
    refused = inference(2, status=None)  # NOT NULL
    with pytest.raises(DBAPIError):
        await repo.insert([inference(1), routing(1), refused, inference(3)])
    assert await count(database, REQUESTS) == 0
    assert await count(database, ROUTING) == 0
    assert await repo.insert([inference(1), routing(1), inference(3)]) == 3


async def test_an_empty_batch(database: Database) -> None:
    assert await TelemetryRepository(database).insert([]) == 0
