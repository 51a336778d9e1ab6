"""routing_decisions: listed by range, filters and pages; summarized per target (both databases)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from helixflow.store.database import Database
from helixflow.store.repositories.decisions import COLUMNS, DecisionRepository
from helixflow.store.repositories.telemetry import TelemetryRepository
from tests.store.factories import routing_event

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DAY = (T0 - timedelta(days=1), T0 + timedelta(days=1))

CANDIDATES = [
    {"target": "acme/gpt-4o-mini", "score": 0.9, "note": "weight 3"},
    {"target": "local/smollm2-135m", "score": 0.1, "note": "weight 1"},
    {"target": "beta/llama", "excluded": "no tool support"},
]
ATTEMPTS = [
    {"target": "acme/gpt-4o-mini", "status": 503, "error": "upstream_error", "ms": 12.5},
    {"target": "local/smollm2-135m", "status": "ok", "retry": 0},
]

# name: (minutes after T0, fields); inserted in this order, so ids grow down the list.
ROWS: dict[str, tuple[float, dict[str, Any]]] = {
    "old": (-120, {}),
    "a": (0, {"requested_model": "auto", "strategy": "weighted", "decision_ms": 1.0}),
    "fallback": (
        1,
        {
            "requested_model": "auto",
            "strategy": "weighted",
            "candidates": CANDIDATES,
            "attempts": ATTEMPTS,
            "fallback_attempts": 1,
            "reason": "weighted: weight 3",
            "decision_ms": 3.0,
        },
    ),
    "direct": (
        2,
        {
            "requested_model": "gpt-4o-mini",
            "strategy": "direct",
            "chosen_target": "acme/gpt-4o-mini",
            "decision_ms": 0.5,
        },
    ),
    "failed": (
        3,
        {
            "requested_model": "auto",
            "strategy": "weighted",
            "chosen_target": None,
            "fallback_attempts": 2,
            "reason": "every target failed",
            "decision_ms": None,
        },
    ),
    "b": (4, {"requested_model": "fast", "strategy": "cost", "decision_ms": 2.0}),
    "at-until": (60, {}),
}


async def store(database: Database, rows: dict[str, tuple[float, dict[str, Any]]]) -> None:
    """Insert through the telemetry writer, one batch per row so that ids follow the order."""
    telemetry = TelemetryRepository(database)
    for i, (minutes, fields) in enumerate(rows.values()):
        event = routing_event(i, created_at=T0 + timedelta(minutes=minutes), **fields)
        assert await telemetry.insert([event]) == 1


async def ids_by_name(repo: DecisionRepository) -> dict[int, str]:
    rows = await repo.list(T0 - timedelta(days=30), T0 + timedelta(days=30), limit=1000)
    request_ids = {f"req-{i:06d}": name for i, name in enumerate(ROWS)}
    return {r["id"]: request_ids[r["request_id"]] for r in rows}


async def test_lists_newest_first_with_every_field(database: Database) -> None:
    await store(database, ROWS)
    repo = DecisionRepository(database)
    rows = await repo.list(*DAY)
    names = await ids_by_name(repo)
    assert [names[r["id"]] for r in rows] == [
        "at-until",
        "b",
        "failed",
        "direct",
        "fallback",
        "a",
        "old",
    ]
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids, reverse=True)
    row = next(r for r in rows if names[r["id"]] == "fallback")
    assert list(row) == list(COLUMNS)
    assert row == {
        "id": row["id"],
        "request_id": "req-000002",
        "created_at": T0 + timedelta(minutes=1),
        "requested_model": "auto",
        "strategy": "weighted",
        "candidates": CANDIDATES,
        "chosen_target": "local/smollm2-135m",
        "reason": "weighted: weight 3",
        "fallback_attempts": 1,
        "attempts": ATTEMPTS,
        "decision_ms": 3.0,
    }
    assert row["created_at"].utcoffset() == timedelta(0)
    failed = next(r for r in rows if names[r["id"]] == "failed")
    assert (failed["chosen_target"], failed["decision_ms"]) == (None, None)
    # Absent candidates and attempts read as empty lists.
    plain = next(r for r in rows if names[r["id"]] == "a")
    assert (plain["candidates"], plain["attempts"]) == ([], [])


async def test_times_are_utc(database: Database) -> None:
    paris = timezone(timedelta(hours=2))
    event = routing_event(1, created_at=datetime(2024, 5, 1, 14, 0, tzinfo=paris))
    assert await TelemetryRepository(database).insert([event]) == 1
    (row,) = await DecisionRepository(database).list(*DAY)
    assert row["created_at"] == T0
    assert row["created_at"].utcoffset() == timedelta(0)
    assert await DecisionRepository(database).list(T0 + timedelta(seconds=1), DAY[1]) == []


async def test_filters_and_range(database: Database) -> None:
    await store(database, ROWS)
    repo = DecisionRepository(database)
    names = await ids_by_name(repo)
    since, until = T0 - timedelta(minutes=1), T0 + timedelta(minutes=60)

    async def listed(**filters: Any) -> list[str]:
        return [names[r["id"]] for r in await repo.list(since, until, **filters)]

    assert await listed() == ["b", "failed", "direct", "fallback", "a"]  # `until` is out
    assert await listed(target="acme/gpt-4o-mini") == ["direct"]
    assert await listed(target="local/smollm2-135m") == ["b", "fallback", "a"]
    assert await listed(requested_model="auto") == ["failed", "fallback", "a"]
    assert await listed(strategy="weighted") == ["failed", "fallback", "a"]
    assert await listed(strategy="cost") == ["b"]
    assert await listed(fallback_only=True) == ["failed", "fallback"]
    assert await listed(failed_only=True) == ["failed"]
    assert await listed(fallback_only=True, target="local/smollm2-135m") == ["fallback"]
    assert await listed(failed_only=True, requested_model="fast") == []
    assert await listed(target="nobody") == []
    assert await listed(limit=2) == ["b", "failed"]


async def test_pages_with_before_id(database: Database) -> None:
    await store(database, ROWS)
    repo = DecisionRepository(database)
    names = await ids_by_name(repo)
    pages: list[list[str]] = []
    before: int | None = None
    for _ in range(len(ROWS) + 1):  # bounded: a page that repeats itself must not loop
        rows = await repo.list(*DAY, limit=3, before_id=before)
        if not rows:
            break
        pages.append([names[r["id"]] for r in rows])
        before = rows[-1]["id"]
    assert pages == [["at-until", "b", "failed"], ["direct", "fallback", "a"], ["old"]]
    # before_id combines with the filters, and excludes the id itself.
    (fallback_id,) = (i for i, n in names.items() if n == "fallback")
    rows = await repo.list(*DAY, requested_model="auto", before_id=fallback_id)
    assert [names[r["id"]] for r in rows] == ["a"]


async def test_summary_per_target(database: Database) -> None:
    await store(database, ROWS)
    repo = DecisionRepository(database)
    since, until = T0 - timedelta(minutes=1), T0 + timedelta(minutes=60)
    assert await repo.summary(since, until) == [
        {
            "target": "local/smollm2-135m",
            "decisions": 3,
            "fallbacks": 1,
            "failed": 0,
            "decision_avg_ms": 2.0,
        },
        {
            "target": "acme/gpt-4o-mini",
            "decisions": 1,
            "fallbacks": 0,
            "failed": 0,
            "decision_avg_ms": 0.5,
        },
        {"target": None, "decisions": 1, "fallbacks": 1, "failed": 1, "decision_avg_ms": None},
    ]
    wider = await repo.summary(*DAY)
    assert wider[0] == {
        "target": "local/smollm2-135m",
        "decisions": 5,
        "fallbacks": 1,
        "failed": 0,
        "decision_avg_ms": 2.0,
    }
    assert await repo.summary(T0 + timedelta(days=2), T0 + timedelta(days=3)) == []


async def test_summary_orders_ties_by_target(database: Database) -> None:
    rows: dict[str, tuple[float, dict[str, Any]]] = {
        "z": (0.0, {"chosen_target": "z-target", "decision_ms": 4.0}),
        "none": (1.0, {"chosen_target": None}),
        "a": (2.0, {"chosen_target": "a-target", "decision_ms": 1.0}),
    }
    await store(database, rows)
    summary = await DecisionRepository(database).summary(*DAY)
    assert [r["target"] for r in summary] == ["a-target", "z-target", None]
    assert [r["failed"] for r in summary] == [0, 0, 1]
