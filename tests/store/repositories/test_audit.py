"""audit_log: appended, listed by range and filters, never changed (SQLite, PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, update
from sqlalchemy.exc import DBAPIError

from helixflow.store.database import Database
from helixflow.store.repositories.audit import AuditRecord, AuditRepository
from helixflow.store.schema import AuditEntry, table_of

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


async def test_append_and_list_newest_first(database: Database) -> None:
    repo = AuditRepository(database)
    first = await repo.append(
        "user:alice",
        "key.create",
        "api_key",
        "key_1",
        None,
        {"name": "ci", "models": ["a"]},
        "req-1",
        "10.0.0.1",
        at=T0,
    )
    second = await repo.append(
        "cli",
        "user.update",
        "user",
        "usr_a",
        {"role": "viewer"},
        {"role": "admin"},
        at=T0 + timedelta(minutes=1),
    )
    entries = await repo.list()
    assert [e.id for e in entries] == [second, first]
    newest, oldest = entries
    assert (oldest.actor, oldest.action, oldest.target_type, oldest.target_id) == (
        "user:alice",
        "key.create",
        "api_key",
        "key_1",
    )
    assert oldest.before is None
    assert oldest.after == {"name": "ci", "models": ["a"]}
    assert (oldest.request_id, oldest.ip_address, oldest.created_at) == ("req-1", "10.0.0.1", T0)
    assert (newest.before, newest.after) == ({"role": "viewer"}, {"role": "admin"})
    assert newest.to_dict()["created_at"] == (T0 + timedelta(minutes=1)).isoformat()


async def test_filters_and_range(database: Database) -> None:
    repo = AuditRepository(database)
    for minute, (actor, action, target_type, target_id) in enumerate(
        [
            ("cli", "key.create", "api_key", "key_1"),
            ("user:alice", "key.revoke", "api_key", "key_1"),
            ("user:alice", "user.update", "user", "usr_b"),
            ("cli", "user.delete", "user", "usr_b"),
        ]
    ):
        await repo.append(actor, action, target_type, target_id, at=T0 + timedelta(minutes=minute))

    def actions(entries: list[AuditRecord]) -> list[str]:
        return [e.action for e in entries]

    assert actions(await repo.list(actor="cli")) == ["user.delete", "key.create"]
    assert actions(await repo.list(action="key.revoke")) == ["key.revoke"]
    assert actions(await repo.list(target_type="user")) == ["user.delete", "user.update"]
    assert actions(await repo.list(target_type="api_key", target_id="key_1", actor="cli")) == [
        "key.create"
    ]
    since, until = T0 + timedelta(minutes=1), T0 + timedelta(minutes=3)
    assert actions(await repo.list(since=since, until=until)) == ["user.update", "key.revoke"]
    assert actions(await repo.list(limit=1)) == ["user.delete"]
    assert await repo.list(actor="nobody") == []


async def test_long_values_are_cut_to_the_columns(database: Database) -> None:
    repo = AuditRepository(database)
    await repo.append("a" * 500, "b" * 100, "c" * 100, "d" * 1000, ip="e" * 100)
    (entry,) = await repo.list()
    assert (len(entry.actor), len(entry.action), len(entry.target_type)) == (128, 64, 64)
    assert (len(entry.target_id or ""), len(entry.ip_address or "")) == (256, 64)


async def test_the_log_is_append_only(database: Database) -> None:
    repo = AuditRepository(database)
    await repo.append("cli", "key.create", "api_key", "key_1", at=T0)
    table = table_of(AuditEntry)
    with pytest.raises(DBAPIError):
        async with database.engine.begin() as conn:
            await conn.execute(update(table).values(actor="someone else"))
    with pytest.raises(DBAPIError):
        async with database.engine.begin() as conn:
            await conn.execute(delete(table))
    (entry,) = await repo.list()
    assert entry.actor == "cli"
