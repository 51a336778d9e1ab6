"""users: create, read, update, delete, and the usage of a user's requests (SQLite, PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from helixflow.security.identity import KeyRecord, UserRecord
from helixflow.security_config import LimitSet
from helixflow.store.database import Database
from helixflow.store.repositories.api_keys import ApiKeyRepository
from helixflow.store.repositories.telemetry import TelemetryRepository
from helixflow.store.repositories.users import UsernameTakenError, UserRepository
from helixflow.store.schema import InferenceRequest, table_of
from tests.store.factories import inference_event

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def user(user_id: str = "usr_a", username: str = "alice", **fields: object) -> UserRecord:
    return UserRecord(id=user_id, username=username, role="developer", **fields)


async def test_create_and_get(database: Database) -> None:
    repo = UserRepository(database)
    created = await repo.create(
        user(email="a@example.com", display_name="Alice", limits=LimitSet(rpm=5, budget_usd=2.5)),
        "$argon2id$hash",
    )
    assert created.id == "usr_a"
    assert created.created_at is not None
    assert created.created_at.tzinfo is not None
    assert created.limits == LimitSet(rpm=5, budget_usd=2.5)
    assert (created.email, created.display_name, created.active) == (
        "a@example.com",
        "Alice",
        True,
    )
    assert await repo.get("usr_a") == created
    assert await repo.get_by_username("alice") == created
    assert await repo.credentials("alice") == (created, "$argon2id$hash")
    assert await repo.get("usr_none") is None
    assert await repo.get_by_username("bob") is None
    assert await repo.credentials("bob") is None


async def test_usernames_are_unique(database: Database) -> None:
    repo = UserRepository(database)
    await repo.create(user(), None)
    with pytest.raises(UsernameTakenError):
        await repo.create(user("usr_b"), None)
    await repo.create(user("usr_b", "bob"), None)
    with pytest.raises(UsernameTakenError):
        await repo.update("usr_b", {"username": "alice"})
    assert [u.username for u in await repo.list()] == ["alice", "bob"]


async def test_list_count_and_paging(database: Database) -> None:
    repo = UserRepository(database)
    for i, name in enumerate(["carol", "alice", "bob"]):
        role = "admin" if name == "bob" else "viewer"
        await repo.create(
            UserRecord(id=f"usr_{i}", username=name, role=role, active=name != "carol"), None
        )
    assert [u.username for u in await repo.list()] == ["alice", "bob", "carol"]
    assert [u.username for u in await repo.list(limit=1, offset=1)] == ["bob"]
    assert await repo.count() == 3
    assert await repo.count(role="admin") == 1
    assert await repo.count(role="viewer", active_only=True) == 1


async def test_update_changes_only_what_is_given(database: Database) -> None:
    repo = UserRepository(database)
    await repo.create(user(email="a@example.com"), "old")
    updated = await repo.update(
        "usr_a", {"role": "admin", "limits": LimitSet(tpm=100), "password_hash": "new"}
    )
    assert updated is not None
    assert (updated.role, updated.limits.tpm, updated.email) == ("admin", 100, "a@example.com")
    assert await repo.credentials("alice") == (updated, "new")
    cleared = await repo.update("usr_a", {"email": None, "active": False})
    assert cleared is not None
    assert (cleared.email, cleared.active) == (None, False)
    assert await repo.update("usr_none", {"active": False}) is None


async def test_touch_login(database: Database) -> None:
    repo = UserRepository(database)
    await repo.create(user(), None)
    await repo.touch_login("usr_a", T0)
    found = await repo.get("usr_a")
    assert found is not None
    assert found.last_login_at == T0


async def test_delete_takes_the_keys_along(database: Database) -> None:
    repo = UserRepository(database)
    keys = ApiKeyRepository(database)
    await repo.create(user(), None)
    await keys.create(
        KeyRecord(id="key_1", name="k", prefix="hf-x", role="developer", owner_id="usr_a"), "h1"
    )
    assert await repo.delete("usr_a")
    assert await repo.get("usr_a") is None
    assert await keys.get("key_1") is None  # ON DELETE CASCADE
    assert not await repo.delete("usr_a")


async def _requests(database: Database) -> None:
    telemetry = TelemetryRepository(database)
    events = [
        inference_event(1, user_id="usr_a", cost_usd=0.5, created_at=T0, end_user="a@x"),
        inference_event(
            2,
            user_id="usr_a",
            status="error",
            http_status=500,
            created_at=T0 + timedelta(minutes=1),
        ),
        inference_event(
            3,
            api_key_id="key_1",
            served_model="gemma",
            cost_usd=0.25,
            created_at=T0 + timedelta(minutes=2),
            client_request_id="c-3",
        ),
        inference_event(4, user_id="usr_b", cost_usd=9.0, end_user="b@x", created_at=T0),
    ]
    await telemetry.insert(events)


async def test_usage_summary_counts_the_user_and_their_keys(database: Database) -> None:
    await _requests(database)
    repo = UserRepository(database)
    usage = await repo.usage_summary("usr_a", ["key_1"])
    assert (usage.requests, usage.errors) == (3, 1)
    assert usage.prompt_tokens == 1 + 2 + 3
    assert usage.cost_usd == pytest.approx(0.75)
    assert usage.first_request_at == T0
    assert usage.last_request_at == T0 + timedelta(minutes=2)
    assert {(m.model, m.requests) for m in usage.by_model} == {("smollm2-135m", 2), ("gemma", 1)}
    nothing = await repo.usage_summary("usr_none", [])
    assert (nothing.requests, nothing.cost_usd, nothing.first_request_at) == (0, 0.0, None)
    assert nothing.by_model == ()


async def test_scrub_requests_clears_only_that_users_personal_fields(database: Database) -> None:
    await _requests(database)
    repo = UserRepository(database)
    assert await repo.scrub_requests("usr_a", ["key_1"]) == 2
    table = table_of(InferenceRequest)
    async with database.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(table.c.request_id, table.c.end_user, table.c.client_request_id).order_by(
                    table.c.request_id
                )
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("req-000001", None, None),
        ("req-000002", None, None),
        ("req-000003", None, None),
        ("req-000004", "b@x", None),
    ]
    assert await repo.scrub_requests("usr_a", ["key_1"]) == 0
