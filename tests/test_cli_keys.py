"""``helixflow keys`` and ``helixflow users``: create (the key printed once), list, revoke, on
the embedded SQLite and on a PostgreSQL named by HELIXFLOW_DATABASE_URL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from helixflow.cli_keys import register
from helixflow.config import Settings
from helixflow.errors import AuthenticationError
from helixflow.security.accounts import AccountService
from helixflow.security.identity import KeyRecord
from helixflow.security.passwords import Passwords
from helixflow.security.secret import load_secret
from helixflow.store.database import Database
from helixflow.store.migrate import Migrator

pytestmark = pytest.mark.usefixtures("clean_env")

runner = CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"})
PASSWORD = "correct horse battery"


@pytest.fixture
def cli() -> typer.Typer:
    """The sub-commands as ``helixflow`` mounts them."""
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"HELIXFLOW_DATA_DIR": str(tmp_path / "data")}


def run(cli: typer.Typer, env: dict[str, str], *args: str, **kwargs: Any) -> Any:
    return runner.invoke(cli, list(args), env=env, **kwargs)


def verify(env: dict[str, str], plaintext: str) -> KeyRecord:
    """What the server (same data directory, same database) says of a key."""

    async def check() -> KeyRecord:
        settings = Settings(data_dir=Path(env["HELIXFLOW_DATA_DIR"]))
        if "HELIXFLOW_DATABASE_URL" in env:
            settings.database.url = env["HELIXFLOW_DATABASE_URL"]
        database = Database(settings.database_url)
        try:
            accounts = AccountService(
                database,
                load_secret(settings, environ={}),
                settings.security,
                passwords=Passwords.fast_for_tests(),
            )
            try:
                return await accounts.verify_key(plaintext)
            finally:
                await accounts.close()
        finally:
            await database.dispose()

    return asyncio.run(check())


def test_key_lifecycle(cli: typer.Typer, env: dict[str, str]) -> None:
    created = run(
        cli,
        env,
        *("keys", "create", "--name", "ci", "--rpm", "50", "--tpm", "1000"),
        *("--models", "smollm2, gemma", "--budget", "5", "--max-parallel", "2"),
        *("--expires-in-days", "30", "--json"),
    )
    assert created.exit_code == 0, created.output
    body = json.loads(created.stdout)
    key = body["key"]
    assert key.startswith("hf-")
    assert (body["name"], body["status"], body["created_by"]) == ("ci", "active", "cli")
    assert body["models"] == ["gemma", "smollm2"]
    assert body["limits"]["rpm"] == 50
    assert body["limits"]["budget_usd"] == 5.0
    assert body["expires_at"] is not None
    assert verify(env, key).id == body["id"]

    listed = run(cli, env, "keys", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [k["id"] for k in json.loads(listed.stdout)] == [body["id"]]
    assert key not in listed.output
    table = run(cli, env, "keys", "list")
    assert table.exit_code == 0
    assert body["id"] in table.output
    assert "rpm 50" in table.output

    revoked = run(cli, env, "keys", "revoke", body["id"])
    assert revoked.exit_code == 0, revoked.output
    assert f"Revoked {body['id']}" in revoked.output
    with pytest.raises(AuthenticationError) as info:
        verify(env, key)
    assert info.value.code == "revoked_api_key"
    assert json.loads(run(cli, env, "keys", "list", "--json").stdout)[0]["status"] == "revoked"


def test_create_without_json_prints_the_key_alone_on_stdout(
    cli: typer.Typer, env: dict[str, str]
) -> None:
    created = run(cli, env, "keys", "create", "--name", "plain")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert verify(env, key).name == "plain"
    assert "not shown again" in created.stderr


def test_revoke_an_unknown_key(cli: typer.Typer, env: dict[str, str]) -> None:
    result = run(cli, env, "keys", "revoke", "key_none")
    assert result.exit_code == 1
    assert "No API key 'key_none'" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "create"],
        ["keys", "create", "--name", "x", "--rpm", "0"],
        ["keys", "create", "--name", "x", "--budget-period", "year"],
        ["keys", "create", "--name", "x", "--role", "root"],
        ["keys", "create", "--name", "x", "--models", " , "],
        ["keys", "create", "--name", "x", "--expires-in-days", "0"],
        ["users", "create", "--username", "u", "--role", "root", "--no-password"],
    ],
)
def test_bad_options_are_usage_errors(
    cli: typer.Typer, env: dict[str, str], args: list[str]
) -> None:
    result = run(cli, env, *args)
    assert result.exit_code == 2, result.output
    assert not (Path(env["HELIXFLOW_DATA_DIR"]) / "helixflow.db").exists()  # nothing opened


def test_an_invalid_name_is_refused(cli: typer.Typer, env: dict[str, str]) -> None:
    result = run(cli, env, "keys", "create", "--name", " ")
    assert result.exit_code == 1
    assert "name" in result.output


def test_users_create_from_an_environment_variable(
    cli: typer.Typer, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALICE_PASSWORD", PASSWORD)
    result = run(
        cli,
        env,
        *("users", "create", "--username", "alice", "--role", "developer"),
        *("--password-env", "ALICE_PASSWORD", "--json"),
    )
    assert result.exit_code == 0, result.output
    user = json.loads(result.stdout)
    assert (user["username"], user["role"]) == ("alice", "developer")
    again = run(
        cli, env, "users", "create", "--username", "alice", "--password-env", "ALICE_PASSWORD"
    )
    assert again.exit_code == 1
    assert "taken" in again.output
    listed = json.loads(run(cli, env, "users", "list", "--json").stdout)
    assert [u["username"] for u in listed] == ["alice"]
    owned = run(cli, env, "keys", "create", "--name", "hers", "--owner", "alice", "--json")
    assert owned.exit_code == 0, owned.output
    assert json.loads(owned.stdout)["owner_id"] == user["id"]


def test_users_create_prompts_for_the_password(cli: typer.Typer, env: dict[str, str]) -> None:
    result = run(
        cli,
        env,
        *("users", "create", "--username", "bob", "--role", "admin"),
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert "Created user bob" in result.output
    assert PASSWORD not in result.output
    table = run(cli, env, "users", "list")
    assert "bob" in table.output
    assert "admin" in table.output


def test_users_create_refuses_a_short_password_and_a_missing_variable(
    cli: typer.Typer, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_VARIABLE", raising=False)
    missing = run(
        cli, env, "users", "create", "--username", "u", "--password-env", "NO_SUCH_VARIABLE"
    )
    assert missing.exit_code == 2
    monkeypatch.setenv("SHORT_PASSWORD", "short")
    short = run(cli, env, "users", "create", "--username", "u", "--password-env", "SHORT_PASSWORD")
    assert short.exit_code == 1
    assert "at least 8" in short.output


def test_postgresql_from_the_environment(
    cli: typer.Typer, env: dict[str, str], postgres_url: str
) -> None:
    env = env | {"HELIXFLOW_DATABASE_URL": postgres_url}
    behind = run(cli, env, "keys", "list")
    assert behind.exit_code == 2  # a server database is migrated by the operator, not here
    assert "helixflow db upgrade" in behind.output

    async def upgrade() -> None:
        database = Database(postgres_url)
        try:
            await Migrator(database).upgrade()
        finally:
            await database.dispose()

    asyncio.run(upgrade())
    created = run(cli, env, "keys", "create", "--name", "pg", "--json")
    assert created.exit_code == 0, created.output
    assert verify(env, json.loads(created.stdout)["key"]).name == "pg"
    assert not (Path(env["HELIXFLOW_DATA_DIR"]) / "helixflow.db").exists()
