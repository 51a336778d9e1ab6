"""alerts: stored when fired, resolved once, listed by range and filters (SQLite, PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import IntegrityError

from helixflow.store.database import Database
from helixflow.store.repositories.alerts import AlertRecord, AlertRepository

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DAY = (T0 - timedelta(days=1), T0 + timedelta(days=1))


def record(minutes: int = 0, **fields: object) -> AlertRecord:
    values: dict[str, object] = {
        "rule": "error_rate",
        "target": "acme/gpt-4o-mini",
        "severity": "warning",
        "value": 0.25,
        "threshold": 0.2,
        "message": "error rate of acme/gpt-4o-mini is 25.0%",
        "details": {"requests": 40, "errors": 10},
        "created_at": T0 + timedelta(minutes=minutes),
    }
    values.update(fields)
    return AlertRecord(**values)  # type: ignore[arg-type]


async def test_add_and_list(database: Database) -> None:
    repo = AlertRepository(database)
    first = await repo.add(record())
    second = await repo.add(
        record(
            1,
            rule="open_circuits",
            target=None,
            severity="critical",
            value=2.0,
            threshold=1.0,
            details={"targets": ["a", "b"], "half_open": []},
        )
    )
    assert second != first
    rows = await repo.list(*DAY)
    assert [r["id"] for r in rows] == [second, first]  # newest first
    newest, oldest = rows
    assert newest["target"] is None
    assert newest["details"] == {"targets": ["a", "b"], "half_open": []}
    assert (newest["severity"], newest["value"], newest["threshold"]) == ("critical", 2.0, 1.0)
    assert oldest == {
        "id": first,
        "created_at": T0,
        "rule": "error_rate",
        "target": "acme/gpt-4o-mini",
        "severity": "warning",
        "state": "firing",
        "value": 0.25,
        "threshold": 0.2,
        "message": "error rate of acme/gpt-4o-mini is 25.0%",
        "details": {"requests": 40, "errors": 10},
        "resolved_at": None,
    }
    assert oldest["created_at"].utcoffset() == timedelta(0)


async def test_times_are_stored_in_utc(database: Database) -> None:
    repo = AlertRepository(database)
    paris = timezone(timedelta(hours=2))
    await repo.add(record(created_at=datetime(2024, 5, 1, 14, 0, tzinfo=paris), details={}))
    (row,) = await repo.list(*DAY)
    assert row["created_at"] == T0
    assert row["created_at"].utcoffset() == timedelta(0)
    assert row["details"] == {}


async def test_resolve(database: Database) -> None:
    repo = AlertRepository(database)
    alert_id = await repo.add(record())
    other = await repo.add(record(target="other"))
    assert await repo.resolve(alert_id, T0 + timedelta(minutes=5))
    assert not await repo.resolve(alert_id, T0 + timedelta(minutes=9))  # only once
    assert not await repo.resolve(999_999, T0)
    rows = {r["id"]: r for r in await repo.list(*DAY)}
    assert rows[alert_id]["state"] == "resolved"
    assert rows[alert_id]["resolved_at"] == T0 + timedelta(minutes=5)
    assert (rows[other]["state"], rows[other]["resolved_at"]) == ("firing", None)


async def test_an_alert_may_be_stored_resolved(database: Database) -> None:
    repo = AlertRepository(database)
    await repo.add(record(state="resolved", resolved_at=T0 + timedelta(minutes=2)))
    (row,) = await repo.list(*DAY, state="resolved")
    assert row["resolved_at"] == T0 + timedelta(minutes=2)


async def test_filters_range_and_limit(database: Database) -> None:
    repo = AlertRepository(database)
    ids = {
        "old": await repo.add(record(-120)),
        "a": await repo.add(record(0, target="a")),
        "b-latency": await repo.add(record(1, target="b", rule="latency_p95")),
        "b": await repo.add(record(2, target="b")),
        "at-until": await repo.add(record(60)),
    }
    await repo.resolve(ids["b"], T0 + timedelta(minutes=3))
    since, until = T0 - timedelta(minutes=1), T0 + timedelta(minutes=60)

    async def listed(**filters: object) -> list[str]:
        rows = await repo.list(since, until, **filters)  # type: ignore[arg-type]
        names = {v: k for k, v in ids.items()}
        return [names[r["id"]] for r in rows]

    assert await listed() == ["b", "b-latency", "a"]  # half-open: `until` itself is out
    assert await listed(target="b") == ["b", "b-latency"]
    assert await listed(rule="error_rate") == ["b", "a"]
    assert await listed(rule="latency_p95", target="b") == ["b-latency"]
    assert await listed(state="firing") == ["b-latency", "a"]
    assert await listed(state="resolved") == ["b"]
    assert await listed(target="nobody") == []
    assert await listed(limit=2) == ["b", "b-latency"]
    rows = await repo.list(T0 - timedelta(hours=3), T0 + timedelta(hours=2))
    assert len(rows) == 5


@pytest.mark.parametrize("severity", ["info", "fatal"])
async def test_the_database_refuses_unknown_severities(database: Database, severity: str) -> None:
    with pytest.raises(IntegrityError, match=r"(?i)check"):
        await AlertRepository(database).add(record(severity=severity))
