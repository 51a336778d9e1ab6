"""The ``helixflow`` command line."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from helixflow import __version__
from helixflow.config import ConfigFileError, ModelConfig, Settings, load_settings
from helixflow.engine.bundled import BUNDLED_MODELS, find_bundled

app = typer.Typer(
    name="helixflow",
    help="HelixFlow: a self-hosted, OpenAI-compatible inference server for GGUF models.",
    no_args_is_help=True,
    add_completion=False,
)
models_app = typer.Typer(help="Inspect the models this server can serve.", no_args_is_help=True)
app.add_typer(models_app, name="models")

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
    config: ConfigOption = None,
) -> None:
    """Start the OpenAI-compatible server and load the configured models."""
    from helixflow.app import create_app
    from helixflow.observability.logging import configure_logging

    settings = _load(config)
    server_cfg = settings.server.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    update: dict[str, Any] = {"server": server_cfg}
    if model is not None:
        update["models"] = [model_from_argument(model)]
    settings = settings.model_copy(update=update)
    configure_logging(settings.server.log_level)
    uv_config = uvicorn.Config(
        create_app(settings),
        host=server_cfg.host,
        port=server_cfg.port,
        log_level=settings.server.log_level,
        access_log=settings.server.access_log,
        log_config=None,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(uv_config)
    asyncio.run(_serve(server, settings))


async def _serve(server: uvicorn.Server, settings: Settings) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn has no event)
        await asyncio.sleep(0.05)
    if server.started:
        _print_banner(server, settings)
    await task
    if not server.started:
        raise typer.Exit(1)


def _print_banner(server: uvicorn.Server, settings: Settings) -> None:
    sockets = [s for srv in server.servers for s in srv.sockets]
    host, port = settings.server.host, settings.server.port
    if sockets:
        name = sockets[0].getsockname()
        port = name[1]
        if sockets[0].family == socket.AF_INET6:
            host = f"[{host}]"
    base = f"http://{host}:{port}"
    first = settings.models[0].id
    console = Console()
    console.print(f"[bold green]HelixFlow {__version__}[/] listening on [bold]{base}[/]")
    console.print("Serving: " + ", ".join(m.id for m in settings.models))
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


def main() -> None:
    app()
