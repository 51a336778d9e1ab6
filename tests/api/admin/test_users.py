"""/api/v1/users and /api/v1/audit through ASGI, on SQLite: admins only (but `me`), privacy
export and deletion, the audit trail and its filters."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from helixflow.security.accounts import AccountService
from helixflow.security.identity import Principal, UserRecord
from helixflow.store.repositories.telemetry import TelemetryRepository
from tests.api.admin.harness import (
    KEYS,
    PASSWORD,
    Acting,
    add_user,
    error,
    user_principal,
)
from tests.store.factories import inference_event

USERS = "/api/v1/users"
AUDIT = "/api/v1/audit"


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post(USERS, json={"password": PASSWORD, **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_create_get_list(
    client: httpx.AsyncClient, accounts: AccountService, admin: UserRecord
) -> None:
    alice = await create(
        client,
        username="alice",
        role="developer",
        email="a@example.com",
        display_name="Alice",
        limits={"rpm": 30, "budget_usd": 5},
    )
    assert alice["object"] == "user"
    assert alice["id"].startswith("usr_")
    assert (alice["username"], alice["role"], alice["active"]) == ("alice", "developer", True)
    assert alice["limits"]["rpm"] == 30
    assert alice["limits"]["budget_usd"] == 5
    assert "password" not in alice
    assert "password_hash" not in alice
    assert await accounts.authenticate("alice", PASSWORD) is not None
    viewer = await create(client, username="vic")
    assert viewer["role"] == "viewer"  # the default: least privilege
    one = await client.get(f"{USERS}/{alice['id']}")
    assert one.status_code == 200
    assert one.json()["email"] == "a@example.com"
    names = [u["username"] for u in (await client.get(USERS)).json()["data"]]
    assert names == ["alice", "root", "vic"]
    page = await client.get(USERS, params={"limit": "1", "offset": "1"})
    assert [u["username"] for u in page.json()["data"]] == ["root"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"username": ""}, "username", None),
        ({"username": "has space"}, "username", None),
        ({"username": "x" * 65}, "username", None),
        ({"username": "alice", "password": "short"}, "password", None),
        ({"username": "alice", "role": "root"}, "role", None),
        ({"username": "alice", "email": "nope"}, "email", None),
        ({"username": "alice", "limits": {"rpm": 0}}, "limits.rpm", None),
        ({"username": "alice", "limits": {"colour": 1}}, "limits.colour", None),
        ({"username": "alice", "active": "maybe"}, "active", None),
        ({"username": "alice", "admin": True}, "admin", None),
        ({"username": "root"}, "username", "username_taken"),
    ],
)
async def test_create_refuses_bad_input(
    client: httpx.AsyncClient,
    accounts: AccountService,
    admin: UserRecord,
    body: dict[str, Any],
    param: str,
    code: str | None,
) -> None:
    response = await client.post(USERS, json={"password": PASSWORD} | body)
    assert response.status_code == 400, response.text
    assert error(response)["param"] == param
    if code is not None:
        assert error(response)["code"] == code
    assert [u.username for u in await accounts.list_users()] == ["root"]


@pytest.mark.parametrize(
    ("params", "param"),
    [({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"offset": "-1"}, "offset")],
)
async def test_list_refuses_bad_paging(
    client: httpx.AsyncClient, admin: UserRecord, params: dict[str, str], param: str
) -> None:
    response = await client.get(USERS, params=params)
    assert response.status_code == 400
    assert error(response)["param"] == param


async def test_patch(
    client: httpx.AsyncClient, accounts: AccountService, admin: UserRecord
) -> None:
    alice = await create(client, username="alice", role="developer", email="a@example.com")
    response = await client.patch(
        f"{USERS}/{alice['id']}",
        json={"role": "viewer", "email": None, "limits": {"tpm": 99}, "password": "new password"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["role"], body["email"], body["limits"]["tpm"]) == ("viewer", None, 99)
    assert await accounts.authenticate("alice", "new password") is not None
    deactivated = await client.patch(f"{USERS}/{alice['id']}", json={"active": False})
    assert deactivated.json()["active"] is False
    assert await accounts.authenticate("alice", "new password") is None
    kept = await client.patch(f"{USERS}/{alice['id']}", json={})
    assert kept.json()["email"] is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"role": "root"}, "role"),
        ({"password": "short"}, "password"),
        ({"email": "nope"}, "email"),
        ({"username": "renamed"}, "username"),
        ({"limits": {"rpm": "fast"}}, "limits.rpm"),
    ],
)
async def test_patch_refuses_bad_input(
    client: httpx.AsyncClient, admin: UserRecord, body: dict[str, Any], param: str
) -> None:
    response = await client.patch(f"{USERS}/{admin.id}", json=body)
    assert response.status_code == 400, response.text
    assert error(response)["param"] == param


async def test_the_last_admin_cannot_be_demoted_or_deleted(
    client: httpx.AsyncClient, admin: UserRecord
) -> None:
    demote = await client.patch(f"{USERS}/{admin.id}", json={"role": "developer"})
    assert demote.status_code == 400
    assert error(demote)["code"] == "last_admin"
    delete = await client.delete(f"{USERS}/{admin.id}")
    assert delete.status_code == 400
    assert error(delete)["code"] == "last_admin"


async def test_unknown_users_are_404(client: httpx.AsyncClient, admin: UserRecord) -> None:
    for method, path, body in (
        ("GET", f"{USERS}/usr_none", None),
        ("PATCH", f"{USERS}/usr_none", {"active": False}),
        ("DELETE", f"{USERS}/usr_none", None),
        ("GET", f"{USERS}/usr_none/export", None),
    ):
        response = await client.request(method, path, json=body)
        assert response.status_code == 404, (method, path)
        assert error(response)["code"] == "user_not_found"


async def test_privacy_export_and_delete(
    client: httpx.AsyncClient, accounts: AccountService, admin: UserRecord
) -> None:
    alice = await create(client, username="alice", role="developer", email="a@example.com")
    key = (await client.post(KEYS, json={"name": "hers", "owner": alice["id"]})).json()
    await TelemetryRepository(accounts.database).insert(
        [inference_event(1, user_id=alice["id"], end_user="alice@corp", cost_usd=0.5)]
    )
    export = await client.get(f"{USERS}/{alice['id']}/export")
    assert export.status_code == 200
    data = export.json()
    assert data["user"]["email"] == "a@example.com"
    assert [k["id"] for k in data["api_keys"]] == [key["id"]]
    assert data["usage"]["requests"] == 1
    assert key["key"] not in export.text
    deleted = await client.delete(f"{USERS}/{alice['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {
        "object": "user.deleted",
        "id": alice["id"],
        "deleted": True,
        "keys_deleted": 1,
        "requests_scrubbed": 1,
    }
    assert (await client.get(f"{USERS}/{alice['id']}")).status_code == 404
    assert (await client.get(f"{KEYS}/{key['id']}")).status_code == 404
    actions = [e["action"] for e in (await client.get(AUDIT)).json()["data"]]
    assert actions[:3] == ["user.delete", "user.export", "key.create"]


async def test_me(client: httpx.AsyncClient, accounts: AccountService, acting: Acting) -> None:
    anonymous = await client.get(f"{USERS}/me")
    assert anonymous.status_code == 200
    assert anonymous.json()["kind"] == "anonymous"
    assert anonymous.json()["user"] is None
    viewer = await add_user(accounts, "vic", "viewer")
    acting.principal = user_principal(viewer)
    me = (await client.get(f"{USERS}/me")).json()
    assert (me["kind"], me["role"], me["user_id"]) == ("user", "viewer", viewer.id)
    assert me["user"]["username"] == "vic"
    acting.principal = Principal(
        kind="key",
        role="developer",
        name="ci",
        user_id=viewer.id,
        key_id="key_1",
        allowed_models=frozenset({"b", "a"}),
    )
    as_key = (await client.get(f"{USERS}/me")).json()
    assert (as_key["kind"], as_key["key_id"], as_key["models"]) == ("key", "key_1", ["a", "b"])
    assert as_key["user"]["id"] == viewer.id


@pytest.mark.parametrize("role", ["developer", "viewer"])
async def test_everything_but_me_is_for_admins(
    client: httpx.AsyncClient, accounts: AccountService, acting: Acting, role: Any
) -> None:
    other = await add_user(accounts, "someone", "admin")
    acting.principal = user_principal(await add_user(accounts, "pat", role))
    for method, path, body in (
        ("POST", USERS, {"username": "new", "password": PASSWORD}),
        ("GET", USERS, None),
        ("GET", f"{USERS}/{other.id}", None),
        ("PATCH", f"{USERS}/{other.id}", {"role": "viewer"}),
        ("DELETE", f"{USERS}/{other.id}", None),
        ("GET", f"{USERS}/{other.id}/export", None),
        ("GET", AUDIT, None),
    ):
        response = await client.request(method, path, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert error(response)["code"] == "insufficient_role"
    assert (await accounts.require_user(other.id)).role == "admin"
    assert (await client.get(f"{USERS}/me")).status_code == 200


async def test_audit_query(
    client: httpx.AsyncClient, accounts: AccountService, admin: UserRecord
) -> None:
    alice = await create(client, username="alice")
    await client.patch(f"{USERS}/{alice['id']}", json={"role": "developer"})
    response = await client.get(AUDIT)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [e["action"] for e in body["data"]] == ["user.update", "user.create", "user.create"]
    update = body["data"][0]
    assert (update["actor"], update["target_type"], update["target_id"]) == (
        "user:root",
        "user",
        alice["id"],
    )
    assert (update["before"]["role"], update["after"]["role"]) == ("viewer", "developer")
    assert update["ip_address"] == "127.0.0.1"
    filtered = await client.get(
        AUDIT, params={"actor": "user:root", "action": "user.create", "window": "1h"}
    )
    assert [e["target_id"] for e in filtered.json()["data"]] == [alice["id"]]
    by_target = await client.get(AUDIT, params={"target_type": "user", "target_id": admin.id})
    assert [e["action"] for e in by_target.json()["data"]] == ["user.create"]
    assert len((await client.get(AUDIT, params={"limit": "1"})).json()["data"]) == 1
    old = await client.get(
        AUDIT, params={"since": "2000-01-01T00:00:00Z", "until": "2000-01-02T00:00:00Z"}
    )
    assert old.json()["data"] == []
    assert "argon2" not in response.text


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"window": "forever"}, "window"),
        ({"since": "yesterday"}, "since"),
        ({"window": "1h", "since": "2024-01-01T00:00:00Z"}, "window"),
        ({"limit": "100000"}, "limit"),
        ({"actor": "x" * 129}, "actor"),
    ],
)
async def test_audit_refuses_bad_parameters(
    client: httpx.AsyncClient, admin: UserRecord, params: dict[str, str], param: str
) -> None:
    response = await client.get(AUDIT, params=params)
    assert response.status_code == 400, response.text
    assert error(response)["param"] == param
