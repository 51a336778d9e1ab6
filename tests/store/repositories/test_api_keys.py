"""api_keys: stored by hash, listed by owner, revoked once, touched in batches (SQLite and
PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from helixflow.security.identity import KeyRecord, UserRecord
from helixflow.security_config import LimitSet
from helixflow.store.database import Database
from helixflow.store.repositories.api_keys import ApiKeyRepository
from helixflow.store.repositories.users import UserRepository
from helixflow.store.schema import ApiKey, table_of

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def key(key_id: str = "key_1", **fields: object) -> KeyRecord:
    values: dict[str, object] = {
        "id": key_id,
        "name": f"name of {key_id}",
        "prefix": "hf-abcdefghi",
        "role": "developer",
        "created_at": T0,
    }
    return KeyRecord(**(values | fields))


@pytest.fixture
async def repo(database: Database) -> ApiKeyRepository:
    users = UserRepository(database)
    for user_id, name in (("usr_a", "alice"), ("usr_b", "bob")):
        await users.create(UserRecord(id=user_id, username=name, role="developer"), None)
    return ApiKeyRepository(database)


async def test_create_round_trips_every_field(repo: ApiKeyRepository) -> None:
    full = key(
        owner_id="usr_a",
        role="viewer",
        allowed_models=frozenset({"b", "a"}),
        limits=LimitSet(rpm=50, tpm=1000, max_parallel=2, budget_usd=12.5, budget_period="day"),
        expires_at=T0 + timedelta(days=30),
        created_by="user:alice",
    )
    created = await repo.create(full, "h" * 64)
    assert created == full
    assert await repo.get("key_1") == full
    assert await repo.get_by_hash("h" * 64) == full
    assert await repo.get_by_hash("x" * 64) is None
    assert await repo.get("key_none") is None


async def test_the_key_hash_is_unique_and_never_returned(
    repo: ApiKeyRepository, database: Database
) -> None:
    await repo.create(key(), "h" * 64)
    with pytest.raises(IntegrityError):
        await repo.create(key("key_2"), "h" * 64)
    table = table_of(ApiKey)
    async with database.engine.connect() as conn:
        stored = (await conn.execute(select(table.c.key_hash))).scalars().all()
    assert stored == ["h" * 64]
    assert "h" * 64 not in repr(await repo.get("key_1"))


async def test_list_by_owner_or_all_newest_first(repo: ApiKeyRepository) -> None:
    await repo.create(key("key_1", owner_id="usr_a"), "h1")
    await repo.create(key("key_2", owner_id="usr_b", created_at=T0 + timedelta(minutes=1)), "h2")
    await repo.create(key("key_3", owner_id="usr_a", created_at=T0 + timedelta(minutes=2)), "h3")
    await repo.create(key("key_4", created_at=T0 + timedelta(minutes=3)), "h4")
    assert [k.id for k in await repo.list()] == ["key_4", "key_3", "key_2", "key_1"]
    assert [k.id for k in await repo.list(owner_id="usr_a")] == ["key_3", "key_1"]
    assert await repo.revoke("key_3", T0)
    assert [k.id for k in await repo.list(owner_id="usr_a", include_revoked=False)] == ["key_1"]


async def test_revoke_once(repo: ApiKeyRepository) -> None:
    await repo.create(key(), "h1")
    assert await repo.any_unrevoked()
    assert await repo.revoke("key_1", T0 + timedelta(hours=1))
    assert not await repo.revoke("key_1", T0 + timedelta(hours=2))  # the first time stays
    revoked = await repo.get("key_1")
    assert revoked is not None
    assert revoked.revoked_at == T0 + timedelta(hours=1)
    assert not await repo.revoke("key_none", T0)
    assert not await repo.any_unrevoked()


async def test_any_unrevoked_on_an_empty_table(repo: ApiKeyRepository) -> None:
    assert not await repo.any_unrevoked()


async def test_touch_in_one_batch_never_backwards(repo: ApiKeyRepository) -> None:
    await repo.create(key("key_1"), "h1")
    await repo.create(key("key_2"), "h2")
    later = T0 + timedelta(minutes=5)
    await repo.touch({"key_1": later, "key_2": T0, "key_none": T0})
    assert [(k.id, k.last_used_at) for k in await repo.list()] == [
        ("key_1", later),
        ("key_2", T0),
    ]
    await repo.touch({"key_1": T0})  # older than what is stored: ignored
    one = await repo.get("key_1")
    assert one is not None
    assert one.last_used_at == later
    await repo.touch({})


async def test_delete_by_owner(repo: ApiKeyRepository) -> None:
    await repo.create(key("key_1", owner_id="usr_a"), "h1")
    await repo.create(key("key_2", owner_id="usr_a"), "h2")
    await repo.create(key("key_3", owner_id="usr_b"), "h3")
    assert await repo.delete_by_owner("usr_a") == 2
    assert [k.id for k in await repo.list()] == ["key_3"]
    assert await repo.delete_by_owner("usr_a") == 0


async def test_an_unknown_owner_is_refused(repo: ApiKeyRepository) -> None:
    with pytest.raises(IntegrityError):
        await repo.create(key(owner_id="usr_none"), "h1")
