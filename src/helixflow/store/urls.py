"""Database URLs as users write them, turned into the async drivers HelixFlow uses."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from helixflow.errors import ConfigurationError

ASYNC_DRIVERS = {
    "sqlite": "aiosqlite",
    "postgresql": "asyncpg",
    "postgres": "asyncpg",
    "hana": "aiohdbcli",
}
"""Backend -> async driver picked when the URL names none (or a sync one)."""


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"database URL is not valid: {redact(url)}") from exc


def async_url(url: str | URL) -> URL:
    """``postgresql://u@h/db`` -> ``postgresql+asyncpg://u@h/db``; ``sqlite:///f`` -> aiosqlite."""
    parsed = parse_url(url) if isinstance(url, str) else url
    backend = parsed.get_backend_name()
    if backend == "postgres":
        parsed = parsed.set(drivername="postgresql")
        backend = "postgresql"
    driver = ASYNC_DRIVERS.get(backend)
    if driver is None:
        raise ConfigurationError(
            f"unsupported database {backend!r}: use sqlite, postgresql or hana"
        )
    return parsed.set(drivername=f"{backend}+{driver}")


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL, or None for other databases and in-memory SQLite."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def redact(url: str | URL) -> str:
    """The URL with its password hidden, for logs and error messages."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<unparseable URL>"
    return parsed.render_as_string(hide_password=True)
