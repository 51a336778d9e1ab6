"""AccountService: users, keys, their checks, the key cache, privacy and the audit trail
(SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from helixflow.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from helixflow.security.accounts import CLI_ACTOR, AccountService, Actor
from helixflow.security.identity import Principal, Role, UserRecord
from helixflow.security.passwords import Passwords
from helixflow.security_config import BootstrapAdmin, LimitSet, SecurityConfig
from helixflow.store.database import Database
from helixflow.store.repositories.telemetry import TelemetryRepository
from helixflow.store.schema import ApiKey, AuditEntry, InferenceRequest, User, table_of
from tests.store.factories import inference_event

SECRET = b"s" * 32
START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
PASSWORD = "correct horse battery"


@dataclass
class Clock:
    """Monotonic seconds (the cache) and wall time (expiry), moved only by the test."""

    tick: float = 1000.0
    wall: datetime = START

    def monotonic(self) -> float:
        return self.tick

    def now(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.tick += seconds
        self.wall += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(database: Database, clock: Clock, config: SecurityConfig | None = None) -> AccountService:
    return AccountService(
        database,
        SECRET,
        config or SecurityConfig(),
        passwords=Passwords.fast_for_tests(),
        clock=clock.monotonic,
        now=clock.now,
    )


@pytest.fixture
async def accounts(database: Database, clock: Clock) -> AsyncIterator[AccountService]:
    service = make(database, clock)
    yield service
    await service.close()


def as_user(user: UserRecord, **fields: Any) -> Actor:
    return Actor(
        Principal(kind="user", role=user.role, name=user.username, user_id=user.id, **fields),
        request_id="req-1",
        ip="10.0.0.9",
    )


def as_key(user: UserRecord, role: Role = "developer", **fields: Any) -> Actor:
    return Actor(
        Principal(kind="key", role=role, name="ci", user_id=user.id, key_id="key_x", **fields)
    )


async def new_user(
    accounts: AccountService, name: str, role: Role = "developer", **fields: Any
) -> UserRecord:
    return await accounts.create_user(name, PASSWORD, role, CLI_ACTOR, **fields)


async def rows(database: Database, model: Any) -> list[dict[str, Any]]:
    async with database.engine.connect() as conn:
        result = await conn.execute(select(table_of(model)))
        return [dict(r) for r in result.mappings().all()]


# --- users and login -------------------------------------------------------------------------


async def test_create_user_and_authenticate(accounts: AccountService, clock: Clock) -> None:
    alice = await new_user(accounts, "alice", email="a@example.com", display_name="Alice")
    assert alice.id.startswith("usr_")
    assert (alice.role, alice.active, alice.email) == ("developer", True, "a@example.com")
    assert await accounts.authenticate("alice", "wrong password") is None
    assert await accounts.authenticate("nobody", PASSWORD) is None
    assert await accounts.authenticate("", PASSWORD) is None
    assert await accounts.authenticate("x" * 100, PASSWORD) is None
    clock.advance(60)
    logged_in = await accounts.authenticate("alice", PASSWORD, request_id="r-9", ip="10.1.1.1")
    assert logged_in is not None
    assert logged_in.id == alice.id
    assert logged_in.last_login_at == clock.wall
    stored = await accounts.require_user(alice.id)
    assert stored.last_login_at == clock.wall
    (login,) = await accounts.audit.list(action="user.login")
    assert (login.actor, login.target_id, login.request_id, login.ip_address) == (
        "user:alice",
        alice.id,
        "r-9",
        "10.1.1.1",
    )


async def test_inactive_users_and_users_without_password_cannot_log_in(
    accounts: AccountService,
) -> None:
    await new_user(accounts, "alice", active=False)
    await accounts.create_user("robot", None, "developer", CLI_ACTOR)
    assert await accounts.authenticate("alice", PASSWORD) is None
    assert await accounts.authenticate("robot", "") is None
    assert await accounts.authenticate("robot", PASSWORD) is None


async def test_an_old_hash_is_upgraded_at_login(database: Database, clock: Clock) -> None:
    cheap = make(database, clock)
    await new_user(cheap, "alice")
    stronger = Passwords(PasswordHasher(time_cost=2, memory_cost=16, parallelism=1))
    service = AccountService(database, SECRET, SecurityConfig(), passwords=stronger)
    assert await service.authenticate("alice", PASSWORD) is not None
    found = await service.users.credentials("alice")
    assert found is not None
    assert found[1] is not None
    assert not stronger.needs_rehash(found[1])
    assert await service.authenticate("alice", PASSWORD) is not None


@pytest.mark.parametrize(
    ("username", "password", "role", "extra", "param", "code"),
    [
        ("", PASSWORD, "viewer", {}, "username", "invalid_username"),
        ("-alice", PASSWORD, "viewer", {}, "username", "invalid_username"),
        ("a b", PASSWORD, "viewer", {}, "username", "invalid_username"),
        ("a" * 65, PASSWORD, "viewer", {}, "username", "invalid_username"),
        ("alice", "short", "viewer", {}, "password", "invalid_password"),
        ("alice", PASSWORD, "root", {}, "role", "invalid_role"),
        ("alice", PASSWORD, "viewer", {"email": "not-an-address"}, "email", "invalid_email"),
        ("alice", PASSWORD, "viewer", {"display_name": "x" * 129}, "display_name", None),
    ],
)
async def test_create_user_refuses_bad_input(
    accounts: AccountService,
    username: str,
    password: str,
    role: Any,
    extra: dict[str, Any],
    param: str,
    code: str | None,
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await accounts.create_user(username, password, role, CLI_ACTOR, **extra)
    assert info.value.param == param
    assert info.value.code == (code or f"invalid_{param}")
    assert await accounts.list_users() == []


async def test_user_names_are_unique(accounts: AccountService) -> None:
    await new_user(accounts, "alice")
    with pytest.raises(InvalidRequestError) as info:
        await new_user(accounts, "alice")
    assert info.value.code == "username_taken"
    assert [e.action for e in await accounts.audit.list()] == ["user.create"]


async def test_only_admins_manage_users(accounts: AccountService) -> None:
    alice = await new_user(accounts, "alice")
    for call in (
        accounts.create_user("bob", PASSWORD, "viewer", as_user(alice)),
        accounts.update_user(alice.id, {"role": "admin"}, as_user(alice)),
        accounts.delete_user_data(alice.id, as_user(alice)),
        accounts.export_user_data(alice.id, as_user(alice)),
    ):
        with pytest.raises(PermissionDeniedError):
            await call
    assert (await accounts.require_user(alice.id)).role == "developer"


async def test_get_and_find_users(accounts: AccountService) -> None:
    alice = await new_user(accounts, "alice")
    assert await accounts.get_user(alice.id) == alice
    assert await accounts.get_user("usr_none") is None
    assert await accounts.find_user("alice") == alice
    assert await accounts.find_user(alice.id) == alice
    with pytest.raises(NotFoundError):
        await accounts.require_user("usr_none")
    with pytest.raises(NotFoundError):
        await accounts.find_user("nobody")


async def test_update_user_is_audited_without_secrets(accounts: AccountService) -> None:
    root = await new_user(accounts, "root", "admin")
    alice = await new_user(accounts, "alice", email="a@example.com")
    updated = await accounts.update_user(
        alice.id,
        {"role": "viewer", "limits": LimitSet(rpm=7), "password": "a new password"},
        as_user(root),
    )
    assert (updated.role, updated.limits.rpm) == ("viewer", 7)
    assert await accounts.authenticate("alice", PASSWORD) is None
    assert await accounts.authenticate("alice", "a new password") is not None
    (entry,) = await accounts.audit.list(action="user.update")
    assert entry.actor == "user:root"
    assert (entry.request_id, entry.ip_address) == ("req-1", "10.0.0.9")
    assert entry.before is not None
    assert entry.after is not None
    assert (entry.before["role"], entry.after["role"]) == ("developer", "viewer")
    assert entry.after["password_changed"] is True
    text = json.dumps([entry.before, entry.after])
    assert "argon2" not in text
    assert "a@example.com" not in text
    unchanged = await accounts.update_user(alice.id, {}, as_user(root))  # nothing to do
    assert unchanged == await accounts.require_user(alice.id)
    assert len(await accounts.audit.list(action="user.update")) == 1
    with pytest.raises(NotFoundError):
        await accounts.update_user("usr_none", {"active": False}, as_user(root))
    with pytest.raises(InvalidRequestError):
        await accounts.update_user(alice.id, {"password": "short"}, as_user(root))


async def test_the_last_active_admin_stays(accounts: AccountService) -> None:
    root = await new_user(accounts, "root", "admin")
    for change in ({"role": "developer"}, {"active": False}):
        with pytest.raises(InvalidRequestError) as info:
            await accounts.update_user(root.id, change, CLI_ACTOR)  # type: ignore[arg-type]
        assert info.value.code == "last_admin"
    with pytest.raises(InvalidRequestError):
        await accounts.delete_user_data(root.id, CLI_ACTOR)
    await new_user(accounts, "second", "admin")
    assert (await accounts.update_user(root.id, {"role": "viewer"}, CLI_ACTOR)).role == "viewer"


# --- keys ------------------------------------------------------------------------------------


async def test_key_lifecycle(accounts: AccountService, database: Database) -> None:
    assert not await accounts.any_credentials()
    record, plaintext = await accounts.create_key(
        "ci",
        allowed_models=["smollm2"],
        limits=LimitSet(rpm=50, budget_usd=5.0),
        actor=CLI_ACTOR,
    )
    assert plaintext.startswith("hf-")
    assert record.prefix == plaintext[: len(record.prefix)]
    assert (record.role, record.owner_id, record.created_by) == ("developer", None, "cli")
    assert record.allowed_models == frozenset({"smollm2"})
    assert await accounts.any_credentials()
    assert await accounts.verify_key(plaintext) == record
    revoked = await accounts.revoke_key(record.id, CLI_ACTOR)
    assert revoked.revoked_at is not None
    with pytest.raises(AuthenticationError) as info:
        await accounts.verify_key(plaintext)  # at once, though it was cached
    assert (info.value.status_code, info.value.code) == (401, "revoked_api_key")
    again = await accounts.revoke_key(record.id, CLI_ACTOR)  # idempotent
    assert again.revoked_at == revoked.revoked_at
    assert not await accounts.any_credentials()
    assert [e.action for e in await accounts.audit.list()] == ["key.revoke", "key.create"]
    # Neither the key nor its hash is anywhere but in the hash column.
    stored = await rows(database, ApiKey)
    dump = json.dumps(stored, default=str) + json.dumps(
        await rows(database, AuditEntry), default=str
    )
    assert plaintext not in dump
    assert dump.count(stored[0]["key_hash"]) == 1


@pytest.mark.parametrize(
    "credential",
    ["", "garbage", "Bearer hf-x", "hf-" + "a" * 43, "sk-" + "a" * 43, "hf-" + "é" * 43],
)
async def test_wrong_keys_are_invalid(accounts: AccountService, credential: str) -> None:
    await accounts.create_key("ci", actor=CLI_ACTOR)
    with pytest.raises(AuthenticationError) as info:
        await accounts.verify_key(credential)
    assert info.value.code == "invalid_api_key"
    assert credential not in info.value.message or not credential


async def test_expired_keys(accounts: AccountService, clock: Clock) -> None:
    _, plaintext = await accounts.create_key(
        "short-lived", expires_at=START + timedelta(hours=1), actor=CLI_ACTOR
    )
    await accounts.verify_key(plaintext)
    clock.advance(3600)
    with pytest.raises(AuthenticationError) as info:
        await accounts.verify_key(plaintext)
    assert info.value.code == "expired_api_key"
    with pytest.raises(InvalidRequestError) as bad:
        await accounts.create_key("past", expires_at=START, actor=CLI_ACTOR)
    assert (bad.value.param, bad.value.code) == ("expires_at", "invalid_expiry")


async def test_the_cache_holds_for_key_cache_s_then_asks_again(
    accounts: AccountService, clock: Clock
) -> None:
    record, plaintext = await accounts.create_key("ci", actor=CLI_ACTOR)
    await accounts.verify_key(plaintext)
    # Another replica revokes it: this one's cache answers until it is older than 5 s.
    await accounts.keys.revoke(record.id, clock.wall)
    clock.advance(4.9)
    assert (await accounts.verify_key(plaintext)).id == record.id
    clock.advance(0.2)
    with pytest.raises(AuthenticationError) as info:
        await accounts.verify_key(plaintext)
    assert info.value.code == "revoked_api_key"


async def test_a_key_created_elsewhere_works_once_the_negative_entry_expires(
    database: Database, clock: Clock
) -> None:
    one, other = make(database, clock), make(database, clock)
    await one.create_key("warmup", actor=CLI_ACTOR)
    _, plaintext = await other.create_key("ci", actor=CLI_ACTOR)
    assert (await one.verify_key(plaintext)).name == "ci"  # never looked up before: a miss


async def test_a_deactivated_owner_stops_their_keys_at_once(accounts: AccountService) -> None:
    await new_user(accounts, "root", "admin")
    alice = await new_user(accounts, "alice")
    _, plaintext = await accounts.create_key("mine", owner_id=alice.id, actor=CLI_ACTOR)
    await accounts.verify_key(plaintext)
    await accounts.update_user(alice.id, {"active": False}, CLI_ACTOR)
    with pytest.raises(AuthenticationError) as info:
        await accounts.verify_key(plaintext)
    assert info.value.code == "inactive_user"


async def test_principal_for_key_caps_the_role_at_the_owners(accounts: AccountService) -> None:
    root = await new_user(accounts, "root", "admin", limits=LimitSet(tpm=99))
    _, plaintext = await accounts.create_key(
        "admin-key", owner_id=root.id, role="admin", limits=LimitSet(rpm=3), actor=CLI_ACTOR
    )
    principal = await accounts.principal_for_key(plaintext)
    assert (principal.kind, principal.role, principal.user_id) == ("key", "admin", root.id)
    assert principal.key_limits == LimitSet(rpm=3)
    assert principal.user_limits == LimitSet(tpm=99)
    await new_user(accounts, "other-admin", "admin")
    await accounts.update_user(root.id, {"role": "viewer"}, CLI_ACTOR)
    assert (await accounts.principal_for_key(plaintext)).role == "viewer"


async def test_last_used_is_written_in_batches(accounts: AccountService, clock: Clock) -> None:
    record, plaintext = await accounts.create_key("ci", actor=CLI_ACTOR)
    await accounts.verify_key(plaintext)
    await accounts.close()  # waits for the flush under way
    first = await accounts.keys.get(record.id)
    assert first is not None
    assert first.last_used_at == START
    clock.advance(30)
    await accounts.verify_key(plaintext)  # within the minute: pending, not written
    assert (await accounts.keys.get(record.id)) == first
    await accounts.flush()
    later = await accounts.keys.get(record.id)
    assert later is not None
    assert later.last_used_at == START + timedelta(seconds=30)


async def test_admins_create_keys_for_users(accounts: AccountService) -> None:
    root = await new_user(accounts, "root", "admin")
    viewer = await new_user(accounts, "vic", "viewer")
    by_name, _ = await accounts.create_key("v", owner_id="vic", actor=as_user(root))
    assert (by_name.owner_id, by_name.role) == (viewer.id, "viewer")  # the owner's role, lower
    with pytest.raises(InvalidRequestError) as info:
        await accounts.create_key("v", owner_id=viewer.id, role="developer", actor=as_user(root))
    assert (info.value.param, info.value.code) == ("role", "role_above_owner")
    with pytest.raises(InvalidRequestError) as unknown:
        await accounts.create_key("x", owner_id="usr_none", actor=as_user(root))
    assert (unknown.value.param, unknown.value.code) == ("owner", "user_not_found")
    for name in ("", "   ", "x" * 129):
        with pytest.raises(InvalidRequestError):
            await accounts.create_key(name, actor=as_user(root))


async def test_developers_create_keys_for_themselves_only(accounts: AccountService) -> None:
    alice = await new_user(accounts, "alice")
    bob = await new_user(accounts, "bob")
    mine, _ = await accounts.create_key("mine", actor=as_user(alice))
    assert (mine.owner_id, mine.role, mine.created_by) == (alice.id, "developer", "user:alice")
    same, _ = await accounts.create_key("again", owner_id=alice.id, actor=as_user(alice))
    assert same.owner_id == alice.id
    with pytest.raises(PermissionDeniedError) as other:
        await accounts.create_key("theirs", owner_id=bob.id, actor=as_user(alice))
    assert other.value.code == "not_owner"
    with pytest.raises(PermissionDeniedError) as higher:
        await accounts.create_key("admin", role="admin", actor=as_user(alice))
    assert higher.value.code == "role_too_high"
    viewer_key, _ = await accounts.create_key("read", role="viewer", actor=as_user(alice))
    assert viewer_key.role == "viewer"
    with pytest.raises(PermissionDeniedError):  # a viewer creates no keys at all
        await accounts.create_key("x", actor=as_user(await new_user(accounts, "vic", "viewer")))
    ownerless = Actor(Principal(kind="key", role="developer", name="ci", key_id="key_1"))
    with pytest.raises(PermissionDeniedError):
        await accounts.create_key("x", actor=ownerless)


async def test_a_keys_models_and_limits_bound_the_keys_it_creates(
    accounts: AccountService,
) -> None:
    alice = await new_user(accounts, "alice")
    actor = as_key(
        alice,
        allowed_models=frozenset({"a", "b"}),
        key_limits=LimitSet(rpm=10, budget_usd=5.0, budget_period="day"),
    )
    inherited, _ = await accounts.create_key("child", actor=actor)
    assert inherited.allowed_models == frozenset({"a", "b"})
    assert inherited.limits == LimitSet(rpm=10, budget_usd=5.0, budget_period="day")
    narrower, _ = await accounts.create_key(
        "narrow",
        allowed_models=["a"],
        limits=LimitSet(rpm=5, tpm=100, budget_usd=1.0, budget_period="day"),
        actor=actor,
    )
    assert narrower.allowed_models == frozenset({"a"})
    assert (narrower.limits.rpm, narrower.limits.tpm, narrower.limits.budget_usd) == (5, 100, 1.0)
    refused = [
        {"allowed_models": ["a", "c"]},
        {"limits": LimitSet(rpm=11)},
        {"limits": LimitSet(budget_usd=1.0, budget_period="month")},
    ]
    for extra in refused:
        with pytest.raises(PermissionDeniedError):
            await accounts.create_key("wider", actor=actor, **extra)


async def test_who_sees_and_revokes_which_keys(accounts: AccountService) -> None:
    root = await new_user(accounts, "root", "admin")
    alice = await new_user(accounts, "alice")
    bob = await new_user(accounts, "bob")
    hers, _ = await accounts.create_key("hers", actor=as_user(alice))
    his, _ = await accounts.create_key("his", actor=as_user(bob))
    assert [k.id for k in await accounts.list_keys(as_user(alice).principal)] == [hers.id]
    assert {k.id for k in await accounts.list_keys(as_user(root).principal)} == {hers.id, his.id}
    assert (await accounts.get_key(hers.id, as_user(alice).principal)).id == hers.id
    with pytest.raises(NotFoundError):
        await accounts.get_key(his.id, as_user(alice).principal)
    with pytest.raises(NotFoundError):
        await accounts.revoke_key(his.id, as_user(alice))
    with pytest.raises(NotFoundError):
        await accounts.get_key("key_none", as_user(root).principal)
    ownerless = Principal(kind="key", role="developer", name="ci", key_id=his.id)
    assert [k.id for k in await accounts.list_keys(ownerless)] == [his.id]
    assert (await accounts.revoke_key(his.id, as_user(root))).revoked_at is not None


# --- privacy ---------------------------------------------------------------------------------


async def _usage(database: Database, user_id: str, key_id: str) -> None:
    await TelemetryRepository(database).insert(
        [
            inference_event(1, user_id=user_id, cost_usd=0.5, end_user="alice@corp"),
            inference_event(2, api_key_id=key_id, cost_usd=0.25, client_request_id="mine-2"),
            inference_event(3, user_id="usr_other", end_user="bob@corp"),
        ]
    )


async def test_export_user_data(accounts: AccountService, database: Database) -> None:
    root = await new_user(accounts, "root", "admin")
    alice = await new_user(accounts, "alice", email="a@example.com", display_name="Alice")
    key, plaintext = await accounts.create_key("mine", owner_id=alice.id, actor=CLI_ACTOR)
    await _usage(database, alice.id, key.id)
    export = await accounts.export_user_data(alice.id, as_user(root))
    text = json.dumps(export)  # JSON-ready
    assert export["user"]["email"] == "a@example.com"
    assert export["user"]["display_name"] == "Alice"
    assert [k["id"] for k in export["api_keys"]] == [key.id]
    assert export["usage"]["requests"] == 2
    assert export["usage"]["cost_usd"] == pytest.approx(0.75)
    assert [e["action"] for e in export["audit"]] == ["user.create"]
    assert plaintext not in text
    assert "argon2" not in text
    assert "key_hash" not in text
    (audited,) = await accounts.audit.list(action="user.export")
    assert (audited.actor, audited.target_id) == ("user:root", alice.id)
    with pytest.raises(NotFoundError):
        await accounts.export_user_data("usr_none")


async def test_delete_user_data(accounts: AccountService, database: Database) -> None:
    root = await new_user(accounts, "root", "admin")
    alice = await new_user(accounts, "alice", email="a@example.com", display_name="Alice")
    key, plaintext = await accounts.create_key("mine", owner_id=alice.id, actor=CLI_ACTOR)
    await accounts.verify_key(plaintext)  # cached now
    await _usage(database, alice.id, key.id)
    summary = await accounts.delete_user_data(alice.id, as_user(root))
    assert (summary.user_id, summary.keys_deleted, summary.requests_scrubbed) == (alice.id, 1, 2)
    with pytest.raises(AuthenticationError):
        await accounts.verify_key(plaintext)
    assert await accounts.get_user(alice.id) is None
    assert await accounts.authenticate("alice", PASSWORD) is None
    assert [u["username"] for u in await rows(database, User)] == ["root"]
    assert await rows(database, ApiKey) == []
    requests = sorted(await rows(database, InferenceRequest), key=lambda r: r["request_id"])
    assert [(r["end_user"], r["client_request_id"]) for r in requests] == [
        (None, None),
        (None, None),
        ("bob@corp", None),
    ]
    assert [r["user_id"] for r in requests] == [alice.id, None, "usr_other"]  # for accounting
    (entry,) = await accounts.audit.list(action="user.delete")
    assert (entry.actor, entry.target_id) == ("user:root", alice.id)
    text = json.dumps([entry.before, entry.after])
    assert "alice" not in text
    assert "a@example.com" not in text
    assert entry.after == summary.to_dict()
    again = await new_user(accounts, "alice")  # the name is free again
    assert again.id != alice.id
    with pytest.raises(NotFoundError):
        await accounts.delete_user_data(alice.id, as_user(root))


# --- bootstrap and the auth switch -----------------------------------------------------------


async def test_bootstrap_admin(
    database: Database, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SecurityConfig(
        bootstrap_admin=BootstrapAdmin(username="boss", password_env="HF_TEST_ADMIN_PASSWORD")
    )
    accounts = make(database, clock, config)
    monkeypatch.delenv("HF_TEST_ADMIN_PASSWORD", raising=False)
    assert await accounts.ensure_bootstrap_admin() is None  # no password configured
    assert not await accounts.any_credentials()
    monkeypatch.setenv("HF_TEST_ADMIN_PASSWORD", "short")
    with pytest.raises(ConfigurationError, match="at least 8"):
        await accounts.ensure_bootstrap_admin()
    monkeypatch.setenv("HF_TEST_ADMIN_PASSWORD", PASSWORD)
    admin = await accounts.ensure_bootstrap_admin()
    assert admin is not None
    assert (admin.username, admin.role) == ("boss", "admin")
    assert await accounts.any_credentials()
    assert await accounts.authenticate("boss", PASSWORD) is not None
    assert await accounts.ensure_bootstrap_admin() is None  # a user exists now
    (entry,) = await accounts.audit.list(action="user.create")
    assert entry.actor == "system"


async def test_bootstrap_from_a_missing_file_is_a_configuration_error(
    database: Database, clock: Clock, tmp_path: Any
) -> None:
    config = SecurityConfig(
        bootstrap_admin=BootstrapAdmin(password_env=None, password_file=tmp_path / "absent")
    )
    with pytest.raises(ConfigurationError, match="password_file"):
        await make(database, clock, config).ensure_bootstrap_admin()


async def test_any_credentials_counts_users_too(accounts: AccountService) -> None:
    assert not await accounts.any_credentials()
    await accounts.create_user("robot", None, "viewer", CLI_ACTOR)
    assert await accounts.any_credentials()


async def test_listeners_hear_of_new_credentials(accounts: AccountService) -> None:
    heard: list[str] = []
    accounts.on_credentials_created(lambda: heard.append("created"))

    def broken() -> None:
        raise RuntimeError("a listener's own bug")

    accounts.on_credentials_created(broken)  # logged, never in the caller's way
    await accounts.create_key("ci", actor=CLI_ACTOR)
    await new_user(accounts, "alice")
    assert heard == ["created", "created"]
    with pytest.raises(InvalidRequestError):
        await new_user(accounts, "alice")
    assert heard == ["created", "created"]  # nothing created, nothing heard
