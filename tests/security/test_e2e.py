"""Security end to end: real servers, the official client, real PostgreSQL and Redis.

One server on SQLite with in-process limits and a bootstrap admin; two servers sharing one
PostgreSQL database, one Redis and one secret (two replicas). Models are served by a fake
upstream provider, so that limits, not generation, decide what happens.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    ServerProcess,
    create_postgres_database,
    drop_postgres_database,
)
from tests.fake_upstream import FakeUpstream

ADMIN_PASSWORD = "correct horse battery staple"
MESSAGES = [{"role": "user", "content": "Say hello."}]
CHAT = "/v1/chat/completions"


def _config(upstream: FakeUpstream, workdir: Path, **security: Any) -> dict[str, Any]:
    password = workdir / "admin-password"
    password.write_text(ADMIN_PASSWORD)
    secret = workdir / "secret"
    if not secret.exists():
        secret.write_text("s" * 48)
        secret.chmod(0o600)
    return {
        "models": [{"id": "smollm2-135m", "bundled": "smollm2-135m", "parallel": 1}],
        "providers": [
            {
                "name": "up",
                "base_url": upstream.base_url,
                "models": [
                    {"name": "m"},
                    {"name": "pricey", "output_price_per_mtok": 100_000.0},
                ],
            }
        ],
        "router": {"probe_interval_s": 3600},
        "security": {
            "secret_env": None,
            "secret_file": str(secret),
            "bootstrap_admin": {"password_env": None, "password_file": str(password)},
            "cookie_secure": False,
            **security,
        },
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("up") as fake:
        yield fake


@pytest.fixture(scope="module")
def server(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("secure")
    proc = ServerProcess(_config(upstream, workdir), workdir, "secure")
    yield proc
    proc.stop()


def login(base_url: str) -> dict[str, Any]:
    response = httpx.post(
        f"{base_url}/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    token = login(server.base_url)["access_token"]
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client


def new_key(admin: httpx.Client, **fields: Any) -> str:
    response = admin.post("/api/v1/keys", json={"name": "test", **fields})
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def as_key(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    return error


# --- who may call -----------------------------------------------------------------------------


def test_every_request_needs_a_key(server: ServerProcess) -> None:
    response = httpx.post(f"{server.base_url}{CHAT}", json={"model": "m", "messages": MESSAGES})
    assert_error(response, 401, "missing_api_key")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_key_lifecycle_with_the_official_client(server: ServerProcess, admin: httpx.Client) -> None:
    key = new_key(admin, name="lifecycle")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Hello from up."
    listed = admin.get("/api/v1/keys").json()["data"]
    mine = next(k for k in listed if k["name"] == "lifecycle")
    assert key not in str(listed)
    assert key.startswith(mine["prefix"])
    revoked = admin.delete(f"/api/v1/keys/{mine['id']}")
    assert revoked.status_code == 200
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert refused.value.code == "revoked_api_key"


def test_wrong_and_expired_keys_are_401(server: ServerProcess, admin: httpx.Client) -> None:
    with as_key(server, "hf-" + "x" * 43) as wrong:
        assert_error(wrong.get("/v1/models"), 401, "invalid_api_key")
    soon = datetime.now(UTC) + timedelta(seconds=2)
    key = new_key(admin, name="short-lived", expires_at=soon.isoformat())
    with as_key(server, key) as client:
        assert client.get("/v1/models").status_code == 200
        time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.5)
        assert_error(client.get("/v1/models"), 401, "expired_api_key")


def test_roles_are_enforced(server: ServerProcess, admin: httpx.Client) -> None:
    viewer = new_key(admin, name="viewer", role="viewer")
    with as_key(server, viewer) as client:
        assert client.get("/v1/models").status_code == 200
        chat = client.post(CHAT, json={"model": "m", "messages": MESSAGES})
        assert_error(chat, 403, "insufficient_role")
    developer = new_key(admin, name="developer")
    with as_key(server, developer) as client:
        assert_error(client.get("/api/v1/users"), 403, "insufficient_role")
        assert_error(client.get("/api/v1/audit"), 403, "insufficient_role")
        drain = client.post("/api/v1/router/targets/up/m/circuit", json={"state": "open"})
        assert_error(drain, 403, "insufficient_role")


def test_a_key_sees_and_uses_only_its_models(server: ServerProcess, admin: httpx.Client) -> None:
    key = new_key(admin, name="scoped", models=["m"])
    with as_key(server, key) as client:
        models = [card["id"] for card in client.get("/v1/models").json()["data"]]
        assert models == ["m"]
        local = client.post(CHAT, json={"model": "smollm2-135m", "messages": MESSAGES})
        assert_error(local, 403, "model_not_allowed")


def test_admin_actions_are_audited(admin: httpx.Client) -> None:
    new_key(admin, name="audited")
    for state in ("open", "closed"):
        drained = admin.post("/api/v1/router/targets/up/m/circuit", json={"state": state})
        assert drained.status_code == 200
    entries = admin.get("/api/v1/audit", params={"window": "1h"}).json()["data"]
    actions = {entry["action"] for entry in entries}
    assert {"user.login", "key.create", "router.circuit"} <= actions
    circuit = next(e for e in entries if e["action"] == "router.circuit")
    assert circuit["target_id"] == "up/m"
    assert circuit["after"] == {"circuit": "closed"}  # newest first
    created = next(e for e in entries if e["action"] == "key.create" and "audited" in str(e))
    assert created["actor"].startswith("user:")


# --- limits and spend -------------------------------------------------------------------------


async def _burst(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        limits=httpx.Limits(max_connections=n),
    ) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{urls[i % len(urls)]}{CHAT}", json={"model": "m", "messages": MESSAGES}
                )
                for i in range(n)
            )
        )


def _count_burst(responses: list[httpx.Response]) -> tuple[int, int]:
    ok = sum(1 for r in responses if r.status_code == 200)
    limited = [r for r in responses if r.status_code == 429]
    for response in limited:
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-ratelimit-limit-requests"] == "50"
        assert response.json()["error"]["type"] == "rate_limit_error"
    assert ok + len(limited) == len(responses), {r.status_code for r in responses}
    return ok, len(limited)


def test_a_burst_of_200_against_rpm_50_lets_exactly_50_through(
    server: ServerProcess, admin: httpx.Client
) -> None:
    key = new_key(admin, name="burst", rpm=50)
    responses = asyncio.run(_burst([server.base_url], key, 200))
    assert _count_burst(responses) == (50, 150)
    first_ok = next(r for r in responses if r.status_code == 200)
    assert first_ok.headers["x-ratelimit-limit-requests"] == "50"
    assert int(first_ok.headers["x-ratelimit-remaining-requests"]) < 50


def test_tokens_per_minute_are_limited(server: ServerProcess, admin: httpx.Client) -> None:
    key = new_key(admin, name="tokens", tpm=20)
    with as_key(server, key) as client:
        statuses = []
        for _ in range(8):
            response = client.post(CHAT, json={"model": "m", "messages": MESSAGES})
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert "tokens" in response.json()["error"]["message"].lower()
                assert response.headers["x-ratelimit-limit-tokens"] == "20"
                break
        assert statuses[0] == 200
        assert statuses[-1] == 429


def test_a_budget_stops_spending_before_any_work(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    key = new_key(admin, name="budget", budget_usd=0.5, budget_period="day")
    with as_key(server, key) as client:
        # Each reply costs 4 output tokens at $100,000 per 1M: $0.40.
        assert client.post(CHAT, json={"model": "pricey", "messages": MESSAGES}).status_code == 200
        assert client.post(CHAT, json={"model": "pricey", "messages": MESSAGES}).status_code == 200
        sent = upstream.count("/v1/chat/completions")
        refused = client.post(CHAT, json={"model": "pricey", "messages": MESSAGES})
        error = assert_error(refused, 429, "budget_exceeded")
        assert error["type"] == "insufficient_quota"
        assert upstream.count("/v1/chat/completions") == sent  # refused before any work


# --- dashboard sessions -----------------------------------------------------------------------


def test_sessions_refresh_rotate_detect_reuse_and_log_out(server: ServerProcess) -> None:
    base = server.base_url
    first = login(base)
    me = httpx.get(
        f"{base}/api/v1/users/me", headers={"Authorization": f"Bearer {first['access_token']}"}
    )
    assert me.json()["name"] == "admin"
    assert me.json()["kind"] == "user"
    second = httpx.post(
        f"{base}/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    ).json()
    assert second["refresh_token"] != first["refresh_token"]
    reused = httpx.post(
        f"{base}/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert_error(reused, 401, "refresh_token_reused")
    family_gone = httpx.post(
        f"{base}/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}
    )
    assert family_gone.status_code == 401
    third = login(base)
    headers = {"Authorization": f"Bearer {third['access_token']}"}
    assert httpx.post(f"{base}/api/v1/auth/logout", headers=headers).status_code == 204
    assert_error(httpx.get(f"{base}/v1/models", headers=headers), 401, "token_revoked")
    jwks = httpx.get(f"{base}/.well-known/jwks.json").json()
    assert jwks["keys"]
    assert all(k["kty"] == "RSA" and k["alg"] == "RS256" for k in jwks["keys"])


def test_a_cookie_session_needs_the_csrf_token(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url) as browser:
        assert (
            browser.post(
                "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            ).status_code
            == 200
        )
        assert browser.get("/api/v1/users/me").status_code == 200
        no_token = browser.post("/api/v1/keys", json={"name": "from-browser"})
        assert_error(no_token, 403, "csrf_failed")
        csrf = browser.cookies["helixflow_csrf"]
        created = browser.post(
            "/api/v1/keys", json={"name": "from-browser"}, headers={"X-CSRF-Token": csrf}
        )
        assert created.status_code == 201


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=st.binary(max_size=200))
def test_malformed_authorization_headers_never_cause_a_500(
    server: ServerProcess, value: bytes
) -> None:
    header = value.replace(b"\r", b"").replace(b"\n", b"").strip()
    try:
        response = httpx.get(f"{server.base_url}/v1/models", headers=[(b"Authorization", header)])
    except httpx.LocalProtocolError:
        return  # a header the client itself refuses to send
    if response.status_code == 400 and not response.headers.get("content-type", "").startswith(
        "application/json"
    ):
        return  # bytes the HTTP parser refuses (control characters) never reach the app
    assert response.status_code == 401, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# --- the safe default -------------------------------------------------------------------------


def test_serve_refuses_a_network_address_without_credentials(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HELIXFLOW_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "helixflow", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "not a loopback address" in " ".join(result.stderr.split())


# --- two replicas on one Redis ----------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    redis_url = os.environ.get("HELIXFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    workdir = tmp_path_factory.mktemp("replicas")
    config = _config(
        upstream,
        workdir,
        limits={"backend": "redis", "key_prefix": f"helixflow:test:{time.time_ns()}:"},
    )
    config["redis"] = {"url": redis_url}
    database_url = create_postgres_database()
    procs: list[ServerProcess] = []
    try:
        for name in ("replica-a", "replica-b"):
            (workdir / name).mkdir()
            procs.append(ServerProcess(config, workdir / name, name, database_url))
        yield procs
    finally:
        for proc in procs:
            proc.stop()
        drop_postgres_database(database_url)


def test_two_replicas_sharing_redis_hold_rpm_50_exactly(replicas: list[ServerProcess]) -> None:
    token = login(replicas[0].base_url)["access_token"]
    response = httpx.post(
        f"{replicas[1].base_url}/api/v1/keys",
        json={"name": "shared", "rpm": 50},
        headers={"Authorization": f"Bearer {token}"},  # a token from the other replica
    )
    assert response.status_code == 201, response.text
    key = response.json()["key"]
    responses = asyncio.run(_burst([p.base_url for p in replicas], key, 200))
    assert _count_burst(responses) == (50, 150)
