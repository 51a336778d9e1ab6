"""The ``helixflow`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from helixflow import __version__
from helixflow.cli_keys import register as register_account_commands
from helixflow.config import ConfigFileError, ModelConfig, Settings, load_settings
from helixflow.engine.bundled import BUNDLED_MODELS, find_bundled
from helixflow.errors import StartupError

if TYPE_CHECKING:
    from helixflow.store.runtime import Store

T = TypeVar("T")

app = typer.Typer(
    name="helixflow",
    help="HelixFlow: a self-hosted, OpenAI-compatible inference server for GGUF models.",
    no_args_is_help=True,
    add_completion=False,
)
models_app = typer.Typer(help="Inspect the models this server can serve.", no_args_is_help=True)
app.add_typer(models_app, name="models")
db_app = typer.Typer(
    help="Manage the database schema (SQLite by default; HELIXFLOW_DATABASE_URL picks another).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
register_account_commands(app)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML configuration file (also: HELIXFLOW_CONFIG).",
        exists=False,
        dir_okay=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"helixflow {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """HelixFlow: serve GGUF models behind the OpenAI API."""


def _load(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc
    except ValueError as exc:
        Console(stderr=True).print(f"[red]Invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from exc


def model_from_argument(value: str) -> ModelConfig:
    """``--model`` takes a bundled model name or a path to a GGUF file."""
    if find_bundled(value) is not None:
        return ModelConfig(id=value, bundled=value)
    path = Path(value).expanduser()
    if not path.is_file():
        known = ", ".join(m.name for m in BUNDLED_MODELS)
        raise typer.BadParameter(
            f"{value!r} is neither a GGUF file nor a bundled model ({known})", param_hint="--model"
        )
    return ModelConfig(id=path.stem.lower(), path=path)


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="GGUF file or bundled model name; replaces the configured list.",
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind [default: 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind [default: 8080; 0 = any].")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes behind the port, each a whole server with its own models "
            "[default: 1].",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Start the OpenAI-compatible server and load the configured models."""
    from helixflow.observability.logging import configure_logging

    settings = _load(config)
    server_cfg = settings.server.model_copy(
        update={
            k: v
            for k, v in {"host": host, "port": port, "workers": workers}.items()
            if v is not None
        }
    )
    update: dict[str, Any] = {"server": server_cfg}
    if model is not None:
        update["models"] = [model_from_argument(model)]
    settings = settings.model_copy(update=update)
    configure_logging(settings.server.log_level, settings.observability.log_format)
    if settings.server.workers > 1:
        _serve_workers(settings, config, model)
        return
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(settings))


def _serve_workers(settings: Settings, config: Path | None, model: str | None) -> None:
    """Check and migrate once here, then let uvicorn spawn the workers, which build their
    apps from the environment (``app.app_from_environment``)."""

    async def check() -> None:
        store = await _open_store(settings)
        await store.close()

    asyncio.run(check())
    server = settings.server
    multiproc = settings.observability.metrics_multiproc_dir or (
        settings.data_dir / "metrics-multiproc"
    )
    shutil.rmtree(multiproc, ignore_errors=True)
    multiproc.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    os.environ["HELIXFLOW_SERVER__WORKERS"] = str(server.workers)
    os.environ["HELIXFLOW_SERVER__HOST"] = server.host
    os.environ["HELIXFLOW_SERVER__PORT"] = str(server.port)
    if config is not None:
        os.environ["HELIXFLOW_CONFIG"] = str(config.resolve())
    if model is not None:
        os.environ["HELIXFLOW_MODELS"] = json.dumps(
            [model_from_argument(model).model_dump(mode="json")]
        )
    Console().print(
        f"[bold green]HelixFlow {__version__}[/] starting {server.workers} workers on "
        f"{server.host}:{server.port}"
    )
    uvicorn.run(
        "helixflow.app:app_from_environment",
        factory=True,
        workers=server.workers,
        host=server.host,
        port=server.port,
        log_level=server.log_level,
        access_log=server.access_log,
        log_config=None,
        loop="uvloop" if _loop_factory() is not None else "asyncio",
        timeout_graceful_shutdown=5,
        ssl_certfile=str(server.tls_certfile) if server.tls_certfile else None,
        ssl_keyfile=str(server.tls_keyfile) if server.tls_keyfile else None,
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed (uvicorn[standard] brings it): about a third less CPU per
    proxied request than the default loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(settings: Settings) -> None:
    from helixflow.app import create_app

    store = await _open_store(settings)
    uv_config = uvicorn.Config(
        create_app(settings, store),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        access_log=settings.server.access_log,
        log_config=None,
        timeout_graceful_shutdown=5,
        ssl_certfile=str(settings.server.tls_certfile) if settings.server.tls_certfile else None,
        ssl_keyfile=str(settings.server.tls_keyfile) if settings.server.tls_keyfile else None,
    )
    server = uvicorn.Server(uv_config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn has no event)
        await asyncio.sleep(0.05)
    if server.started:
        _print_banner(server, settings)
    await task
    if not server.started:
        raise typer.Exit(1)


async def _open_store(settings: Settings) -> Store:
    """Check the router's configuration, reach the database and bring its schema up to date
    (or refuse) before binding."""
    from helixflow.router.runtime import preflight
    from helixflow.store.runtime import Store

    try:
        preflight(settings)
        store = await Store.open(settings)
    except StartupError as exc:
        Console(stderr=True).print(f"[red]Cannot start:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    try:
        await _check_exposure(settings, store)
    except StartupError as exc:
        await store.close()
        Console(stderr=True).print(f"[red]Cannot start:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    return store


async def _check_exposure(settings: Settings, store: Store) -> None:
    """No unauthenticated server on a network address (security/exposure.py)."""
    from helixflow.security.accounts import credentials_exist
    from helixflow.security.exposure import check_exposure
    from helixflow.store.repositories.api_keys import ApiKeyRepository
    from helixflow.store.repositories.users import UserRepository

    async def any_credentials() -> bool:
        if settings.security.bootstrap_admin.password():
            return True  # the lifespan creates the admin before serving
        database = store.database
        return await credentials_exist(UserRepository(database), ApiKeyRepository(database))

    await check_exposure(settings.server.host, settings.security.auth, any_credentials)


def _print_banner(server: uvicorn.Server, settings: Settings) -> None:
    sockets = [s for srv in server.servers for s in srv.sockets]
    host, port = settings.server.host, settings.server.port
    if sockets:
        name = sockets[0].getsockname()
        port = name[1]
        if sockets[0].family == socket.AF_INET6:
            host = f"[{host}]"
    scheme = "https" if settings.server.tls_certfile else "http"
    base = f"{scheme}://{host}:{port}"
    first = settings.models[0].id
    console = Console()
    console.print(f"[bold green]HelixFlow {__version__}[/] listening on [bold]{base}[/]")
    console.print("Serving: " + ", ".join(m.id for m in settings.models))
    for provider in settings.providers:
        if provider.enabled:
            names = ", ".join(m.name for m in provider.model_configs())
            console.print(f"Upstream {provider.name} ({provider.base_url}): {names}")
    groups = ", ".join(g.name for g in settings.router.groups)
    if groups:
        console.print(f"Groups (the router chooses): {groups}")
    payload = json.dumps({"model": first, "messages": [{"role": "user", "content": "Hello!"}]})
    console.print("Try:", style="bold")
    console.print(
        f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json' -d '{payload}'",
        highlight=False,
        soft_wrap=True,
    )


@models_app.command("list")
def list_models(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the configured models and the bundled ones you can serve by name."""
    settings = _load(config)
    rows: list[dict[str, Any]] = [
        {
            "id": m.id,
            "source": f"bundled:{m.bundled}" if m.bundled else str(m.path),
            "aliases": m.aliases,
            "context_size": m.context_size,
            "parallel": m.parallel,
            "configured": True,
        }
        for m in settings.models
    ]
    configured = {m.bundled for m in settings.models}
    rows += [
        {
            "id": b.name,
            "source": f"bundled ({b.package})",
            "aliases": [],
            "context_size": None,
            "parallel": None,
            "configured": False,
            "installed": b.available(),
        }
        for b in BUNDLED_MODELS
        if b.name not in configured
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Models")
    for column in ("id", "source", "aliases", "context", "parallel", "status"):
        table.add_column(column)
    for row in rows:
        status = (
            "configured"
            if row["configured"]
            else ("installed" if row.get("installed") else "not installed")
        )
        table.add_row(
            row["id"],
            row["source"],
            ", ".join(row["aliases"]) or "-",
            str(row["context_size"] or "-"),
            str(row["parallel"] or "-"),
            status,
        )
    Console().print(table)


def _database(settings: Settings) -> Any:
    from helixflow.store.database import Database

    try:
        return Database(settings.database_url, settings.database)
    except StartupError as exc:
        Console(stderr=True).print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc


def _run_db(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Connect (with the configured retries), run ``work(migrator)``, disconnect."""
    from helixflow.store.migrate import Migrator

    async def run() -> T:
        database = _database(settings)
        try:
            await database.connect()
            return await work(Migrator(database))
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except StartupError as exc:
        Console(stderr=True).print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc


SqlOption = Annotated[
    bool,
    typer.Option(
        "--sql",
        help="Print the SQL for the database's dialect instead of running it (for review "
        "by a DBA, or for SAP HANA); needs no connection.",
    ),
]


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    sql: SqlOption = False,
    config: ConfigOption = None,
) -> None:
    """Apply pending migrations (safe to run again; it does nothing when up to date)."""
    settings = _load(config)
    if sql:
        from helixflow.store.migrate import offline_sql

        typer.echo(offline_sql(settings.database_url, revision))
        return

    async def work(migrator: Any) -> Any:
        before = await migrator.current()
        await migrator.upgrade(revision)
        return before, await migrator.status()

    before, status = _run_db(settings, work)
    console = Console()
    if before == status.current:
        console.print(f"{status.url}: already at {status.current or 'base'}", highlight=False)
    else:
        console.print(
            f"{status.url}: upgraded from {before or 'base'} to {status.current}",
            highlight=False,
        )


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[
        str, typer.Argument(help="Target revision: an id, 'base' (drops everything) or -1.")
    ],
    config: ConfigOption = None,
) -> None:
    """Revert migrations down to REVISION. Data in dropped tables is lost."""
    settings = _load(config)

    async def work(migrator: Any) -> Any:
        before = await migrator.current()
        await migrator.downgrade(revision)
        return before, await migrator.status()

    before, status = _run_db(settings, work)
    Console().print(
        f"{status.url}: downgraded from {before or 'base'} to {status.current or 'base'}",
        highlight=False,
    )


@db_app.command("status")
def db_status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit with status 1 when migrations are pending.")
    ] = False,
) -> None:
    """Show the database, its schema revision and the migrations still to apply."""
    settings = _load(config)

    async def work(migrator: Any) -> Any:
        return await migrator.status()

    status = _run_db(settings, work)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "url": status.url,
                    "dialect": status.dialect,
                    "current": status.current,
                    "head": status.head,
                    "pending": status.pending,
                    "up_to_date": status.up_to_date,
                },
                indent=2,
            )
        )
    else:
        console = Console()
        console.print(f"database: {status.url} ({status.dialect})", highlight=False)
        console.print(f"current:  {status.current or 'empty (no schema)'}", highlight=False)
        console.print(f"head:     {status.head}", highlight=False)
        if status.up_to_date:
            console.print("[green]up to date[/green]")
        else:
            console.print(
                f"[yellow]{len(status.pending)} migration(s) pending:[/yellow] "
                f"{', '.join(status.pending)}; run `helixflow db upgrade`"
            )
    if check and not status.up_to_date:
        raise typer.Exit(1)


def main() -> None:
    app()
