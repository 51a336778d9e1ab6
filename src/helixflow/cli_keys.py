"""``helixflow keys`` and ``helixflow users``: API keys and users from the shell.

The commands open the database as ``helixflow db`` does (the configuration's URL, or
``HELIXFLOW_DATABASE_URL``), bring an embedded SQLite schema up to date as ``serve`` does,
read the server secret as the server does (so that the keys they create verify there), and
act as the administrator ``cli`` in the audit log.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from helixflow.errors import HelixFlowError, StartupError
from helixflow.security.account_policy import key_status, key_view, user_view
from helixflow.security.identity import ANONYMOUS, ROLES, KeyRecord, Role
from helixflow.security_config import BudgetPeriod, LimitSet

if TYPE_CHECKING:  # imported when a command runs: `helixflow --help` stays quick
    from helixflow.security.accounts import AccountService

T = TypeVar("T")

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
users_app = typer.Typer(help="Create and list users.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Mount ``keys`` and ``users`` on the main command line."""
    app.add_typer(keys_app, name="keys")
    app.add_typer(users_app, name="users")


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML configuration file (also: HELIXFLOW_CONFIG).", dir_okay=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _fail(message: str, code: int) -> typer.Exit:
    Console(stderr=True).print(message, style="red", highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(code)


def _run(config: Path | None, work: Callable[[AccountService], Awaitable[T]]) -> T:
    """Load the settings, open the database (upgrading SQLite's schema), run ``work``."""
    from helixflow.cli import _load
    from helixflow.security.accounts import AccountService
    from helixflow.security.secret import load_secret
    from helixflow.store.database import Database
    from helixflow.store.migrate import Migrator

    settings = _load(config)

    async def run() -> T:
        secret = load_secret(settings)
        database = Database(settings.database_url, settings.database)
        try:
            await database.connect()
            await Migrator(database).ensure_schema(settings.database)
            accounts = AccountService(database, secret, settings.security)
            try:
                return await work(accounts)
            finally:
                await accounts.close()
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except StartupError as exc:
        raise _fail(f"Cannot open the database: {exc}", 2) from exc
    except HelixFlowError as exc:
        raise _fail(exc.message, 1) from exc


def _key_json(key: KeyRecord, now: datetime) -> dict[str, Any]:
    return key_view(key) | {"status": key_status(key, now)}


def _role(value: str, param: str) -> Role:
    for role in ROLES:
        if role == value:
            return role
    raise typer.BadParameter(f"use one of {', '.join(ROLES)}", param_hint=param)


def _models(value: str | None) -> list[str] | None:
    if value is None:
        return None
    models = [m.strip() for m in value.split(",") if m.strip()]
    if not models:
        raise typer.BadParameter("name at least one model", param_hint="--models")
    return models


# --- keys ------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute.")] = None,
    models: Annotated[
        str | None, typer.Option(help="Models it may call, comma-separated (default all).")
    ] = None,
    budget: Annotated[
        float | None, typer.Option(min=0, help="Spend allowed per period, in USD.")
    ] = None,
    budget_period: Annotated[str, typer.Option(help="day, week, month or total.")] = "month",
    max_parallel: Annotated[
        int | None, typer.Option(min=1, help="Requests in flight at once.")
    ] = None,
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, max=3650, help="Days until it stops working.")
    ] = None,
    role: Annotated[str, typer.Option(help="viewer, developer or admin.")] = "developer",
    owner: Annotated[str | None, typer.Option(help="Owning user (id or name).")] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Create an API key and print it: this is the only time it is shown."""
    if budget_period not in ("day", "week", "month", "total"):
        raise typer.BadParameter("use day, week, month or total", param_hint="--budget-period")
    period = cast(BudgetPeriod, budget_period)
    allowed = _models(models)
    key_role = _role(role, "--role")
    now = datetime.now(UTC)
    limits = LimitSet(
        rpm=rpm, tpm=tpm, max_parallel=max_parallel, budget_usd=budget, budget_period=period
    )
    expires_at = None if expires_in_days is None else now + timedelta(days=expires_in_days)

    async def work(accounts: AccountService) -> tuple[KeyRecord, str]:
        from helixflow.security.accounts import CLI_ACTOR

        return await accounts.create_key(
            name,
            owner_id=owner,
            role=key_role,
            allowed_models=allowed,
            limits=limits,
            expires_at=expires_at,
            actor=CLI_ACTOR,
        )

    record, plaintext = _run(config, work)
    if as_json:
        typer.echo(json.dumps({"key": plaintext} | _key_json(record, now), indent=2))
        return
    Console(stderr=True).print(
        f"Created API key {record.id} ({record.name}). Copy it now: it is not shown again.",
        highlight=False,
        markup=False,
    )
    typer.echo(plaintext)


@keys_app.command("list")
def keys_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List every API key (never the keys themselves: their first characters)."""

    async def work(accounts: AccountService) -> list[KeyRecord]:
        return await accounts.list_keys(ANONYMOUS)

    keys = _run(config, work)
    now = datetime.now(UTC)
    if as_json:
        typer.echo(json.dumps([_key_json(k, now) for k in keys], indent=2))
        return
    table = Table(title="API keys")
    for column in (
        "id",
        "name",
        "prefix",
        "role",
        "owner",
        "models",
        "limits",
        "expires",
        "status",
    ):
        table.add_column(column)
    for key in keys:
        limits = key.limits
        shown = [
            f"{label} {value:g}" if isinstance(value, float) else f"{label} {value}"
            for label, value in (
                ("rpm", limits.rpm),
                ("tpm", limits.tpm),
                ("parallel", limits.max_parallel),
                (f"USD/{limits.budget_period}", limits.budget_usd),
            )
            if value is not None
        ]
        table.add_row(
            key.id,
            escape(key.name),
            key.prefix + "…",
            key.role,
            key.owner_id or "-",
            escape(", ".join(sorted(key.allowed_models)))
            if key.allowed_models is not None
            else "all",
            ", ".join(shown) or "-",
            key.expires_at.strftime("%Y-%m-%d %H:%M") if key.expires_at else "never",
            key_status(key, now),
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
    config: ConfigOption = None,
) -> None:
    """Revoke an API key: it stops working within seconds on every replica."""

    async def work(accounts: AccountService) -> KeyRecord:
        from helixflow.security.accounts import CLI_ACTOR

        return await accounts.revoke_key(key_id, CLI_ACTOR)

    key = _run(config, work)
    Console().print(f"Revoked {key.id} ({key.name}).", highlight=False, markup=False)


# --- users -----------------------------------------------------------------------------------


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Option("--username", help="The login name.")],
    role: Annotated[str, typer.Option(help="viewer, developer or admin.")] = "viewer",
    password_env: Annotated[
        str | None,
        typer.Option(help="Read the password from this environment variable (else a prompt)."),
    ] = None,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="A user who may not log in, only own keys.")
    ] = False,
    email: Annotated[str | None, typer.Option(help="E-mail address.")] = None,
    display_name: Annotated[str | None, typer.Option(help="Name to show.")] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Create a user (the password from --password-env or a prompt)."""
    user_role = _role(role, "--role")
    password: str | None = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            raise typer.BadParameter(f"{password_env} is not set", param_hint="--password-env")
    elif not no_password:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)

    async def work(accounts: AccountService) -> dict[str, Any]:
        from helixflow.security.accounts import CLI_ACTOR

        user = await accounts.create_user(
            username,
            password,
            user_role,
            CLI_ACTOR,
            email=email,
            display_name=display_name,
        )
        return user_view(user, personal=True)

    view = _run(config, work)
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    Console().print(
        f"Created user {view['username']} ({view['id']}, {view['role']}).",
        highlight=False,
        markup=False,
    )


@users_app.command("list")
def users_list(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """List the users."""

    async def work(accounts: AccountService) -> list[dict[str, Any]]:
        return [user_view(u, personal=True) for u in await accounts.list_users()]

    users = _run(config, work)
    if as_json:
        typer.echo(json.dumps(users, indent=2))
        return
    table = Table(title="Users")
    for column in ("id", "username", "role", "active", "email", "last login"):
        table.add_column(column)
    for user in users:
        table.add_row(
            user["id"],
            user["username"],
            user["role"],
            "yes" if user["active"] else "no",
            escape(user["email"] or "-"),
            user["last_login_at"] or "never",
        )
    Console().print(table)
