"""/api/v1/keys through ASGI, on SQLite: create (shown once), list, get, revoke, and who may."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from helixflow.errors import AuthenticationError
from helixflow.security.accounts import CLI_ACTOR, AccountService
from helixflow.security.identity import KeyRecord, Principal, UserRecord
from tests.api.admin.harness import (
    KEYS,
    Acting,
    accounts_app,
    add_user,
    asgi_client,
    error,
    user_principal,
)


@pytest.fixture
async def developer(accounts: AccountService) -> UserRecord:
    return await add_user(accounts, "alice", "developer")


async def test_create_shows_the_key_once(
    client: httpx.AsyncClient, accounts: AccountService, admin: UserRecord
) -> None:
    response = await client.post(
        KEYS,
        json={
            "name": "ci",
            "models": ["smollm2", "gemma"],
            "rpm": 50,
            "tpm": 10_000,
            "max_parallel": 4,
            "budget_usd": 12.5,
            "budget_period": "week",
            "expires_in_days": 30,
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    key = body["key"]
    assert key.startswith("hf-")
    assert body["prefix"] == key[: len(body["prefix"])]
    assert body["object"] == "api_key"
    assert body["models"] == ["gemma", "smollm2"]
    assert (body["rpm"], body["tpm"], body["max_parallel"]) == (50, 10_000, 4)
    assert (body["budget_usd"], body["budget_period"]) == (12.5, "week")
    assert (body["role"], body["owner_id"], body["status"]) == ("developer", None, "active")
    assert body["created_by"] == "user:root"
    lifetime = datetime.fromisoformat(body["expires_at"]) - datetime.fromisoformat(
        body["created_at"]
    )
    assert timedelta(days=30) - timedelta(minutes=1) < lifetime <= timedelta(days=30)
    assert (await accounts.verify_key(key)).id == body["id"]
    listed = await client.get(KEYS)
    assert listed.status_code == 200
    assert key not in listed.text
    assert [k["id"] for k in listed.json()["data"]] == [body["id"]]
    one = await client.get(f"{KEYS}/{body['id']}")
    assert one.status_code == 200
    assert "key" not in one.json()
    (entry,) = await accounts.audit.list(action="key.create")
    assert (entry.actor, entry.ip_address) == ("user:root", "127.0.0.1")


async def test_admin_creates_a_key_for_a_user(
    client: httpx.AsyncClient, admin: UserRecord, developer: UserRecord
) -> None:
    response = await client.post(
        KEYS, json={"name": "for alice", "owner": "alice", "expires_at": "2999-01-01T00:00:00"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["owner_id"] == developer.id
    assert body["expires_at"].startswith("2999-01-01T00:00:00")
    unknown = await client.post(KEYS, json={"name": "x", "owner": "nobody"})
    assert unknown.status_code == 400
    assert error(unknown)["code"] == "user_not_found"


async def test_revoke_stops_the_key(
    client: httpx.AsyncClient, accounts: AccountService, admin: UserRecord
) -> None:
    created = (await client.post(KEYS, json={"name": "ci"})).json()
    await accounts.verify_key(created["key"])
    response = await client.delete(f"{KEYS}/{created['id']}")
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    assert response.json()["revoked_at"] is not None
    with pytest.raises(AuthenticationError) as info:
        await accounts.verify_key(created["key"])
    assert info.value.code == "revoked_api_key"
    listed = (await client.get(KEYS)).json()["data"]
    assert [k["status"] for k in listed] == ["revoked"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"name": "ci", "rpm": 0}, "rpm"),
        ({"name": "ci", "tpm": -5}, "tpm"),
        ({"name": "ci", "max_parallel": "many"}, "max_parallel"),
        ({"name": "ci", "budget_usd": -1}, "budget_usd"),
        ({"name": "ci", "budget_period": "year"}, "budget_period"),
        ({"name": "ci", "models": []}, "models"),
        ({"name": "ci", "models": [""]}, "models[0]"),
        ({"name": "ci", "role": "root"}, "role"),
        ({"name": "ci", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "ci", "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "ci", "expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
        (
            {"name": "ci", "expires_at": "2999-01-01T00:00:00Z", "expires_in_days": 3},
            "expires_in_days",
        ),
        ({"name": "ci", "colour": "blue"}, "colour"),
    ],
)
async def test_bad_input_is_a_400(
    client: httpx.AsyncClient,
    accounts: AccountService,
    admin: UserRecord,
    body: dict[str, Any],
    param: str,
) -> None:
    response = await client.post(KEYS, json=body)
    assert response.status_code == 400, response.text
    assert error(response)["param"] == param
    assert error(response)["type"] == "invalid_request_error"
    assert await accounts.list_keys(user_principal(admin)) == []


async def test_a_body_that_is_not_json_is_a_400(
    client: httpx.AsyncClient, admin: UserRecord
) -> None:
    response = await client.post(
        KEYS, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


async def test_developers_manage_their_own_keys_only(
    client: httpx.AsyncClient,
    accounts: AccountService,
    acting: Acting,
    developer: UserRecord,
) -> None:
    bob = await add_user(accounts, "bob", "developer")
    his, _ = await accounts.create_key("his", owner_id=bob.id, actor=CLI_ACTOR)
    acting.principal = user_principal(developer)
    mine = await client.post(KEYS, json={"name": "mine"})
    assert mine.status_code == 201
    assert mine.json()["owner_id"] == developer.id
    for body, code in (
        ({"name": "x", "owner": bob.id}, "not_owner"),
        ({"name": "x", "role": "admin"}, "role_too_high"),
    ):
        refused = await client.post(KEYS, json=body)
        assert refused.status_code == 403, refused.text
        assert error(refused)["code"] == code
        assert error(refused)["type"] == "permission_error"
    assert [k["id"] for k in (await client.get(KEYS)).json()["data"]] == [mine.json()["id"]]
    for method in ("GET", "DELETE"):
        hidden = await client.request(method, f"{KEYS}/{his.id}")
        assert hidden.status_code == 404
        assert error(hidden)["code"] == "key_not_found"
    assert (await accounts.keys.get(his.id)) == his  # not revoked
    revoked = await client.delete(f"{KEYS}/{mine.json()['id']}")
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"


async def test_viewers_may_not_touch_keys(
    client: httpx.AsyncClient, accounts: AccountService, acting: Acting
) -> None:
    viewer = await add_user(accounts, "vic", "viewer")
    acting.principal = user_principal(viewer)
    for method, path, body in (
        ("POST", KEYS, {"name": "x"}),
        ("GET", KEYS, None),
        ("GET", f"{KEYS}/key_1", None),
        ("DELETE", f"{KEYS}/key_1", None),
    ):
        response = await client.request(method, path, json=body)
        assert response.status_code == 403, (method, path)
        assert error(response)["code"] == "insufficient_role"
    assert await accounts.list_keys(user_principal(viewer)) == []


async def test_an_unauthenticated_principal_gets_401(
    client: httpx.AsyncClient, acting: Acting
) -> None:
    acting.principal = Principal(kind="anonymous", role="viewer", name="unauthenticated")
    response = await client.get(KEYS)
    assert response.status_code == 401
    assert error(response)["type"] == "authentication_error"


async def test_without_authentication_the_caller_is_the_anonymous_admin(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(KEYS, json={"name": "first"})
    assert response.status_code == 201
    assert response.json()["created_by"] == "anonymous"


async def test_unknown_key_is_a_404(client: httpx.AsyncClient, admin: UserRecord) -> None:
    for method in ("GET", "DELETE"):
        response = await client.request(method, f"{KEYS}/key_none")
        assert response.status_code == 404
        assert error(response)["param"] == "key_id"


async def test_no_accounts_service_is_a_503(acting: Acting) -> None:
    async with asgi_client(accounts_app(None, acting)) as http:
        response = await http.get(KEYS)
    assert response.status_code == 503
    assert error(response)["code"] == "accounts_unavailable"


async def test_an_expired_key_is_listed_as_expired(
    client: httpx.AsyncClient, accounts: AccountService, admin: UserRecord
) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    stored = KeyRecord(id="key_old", name="old", prefix="hf-old", role="viewer", expires_at=past)
    await accounts.keys.create(stored, "h" * 64)
    response = await client.get(f"{KEYS}/key_old")
    assert response.status_code == 200
    assert response.json()["status"] == "expired"
