"""Database URLs, connection retries, timeouts and pool figures."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from helixflow.backoff import backoff_delays
from helixflow.config import DatabaseConfig
from helixflow.errors import ConfigurationError, DatabaseUnavailableError
from helixflow.store.database import Database
from helixflow.store.urls import async_url, redact, sqlite_path
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("written", "driver"),
    [
        ("postgresql://u@h:5432/db", "postgresql+asyncpg"),
        ("postgres://u@h/db", "postgresql+asyncpg"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
        ("sqlite:///tmp/x.db", "sqlite+aiosqlite"),
        ("hana://u:p@h:30015", "hana+aiohdbcli"),
    ],
)
def test_plain_urls_get_the_async_driver(written: str, driver: str) -> None:
    assert async_url(written).drivername == driver


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url", "oracle://x"])
def test_unsupported_or_malformed_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        async_url(url)


def test_redact_hides_the_password() -> None:
    shown = redact("postgresql://alice:s3cret@db.internal:5432/helix")
    assert "s3cret" not in shown
    assert "alice" in shown
    assert "db.internal" in shown


def test_sqlite_path() -> None:
    assert str(sqlite_path(async_url("sqlite:////var/lib/h.db"))) == "/var/lib/h.db"
    assert sqlite_path(async_url("sqlite:///:memory:")) is None
    assert sqlite_path(async_url("postgresql://h/db")) is None


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    delays = list(backoff_delays(0.5, 3.0, 6))
    nominal = [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert len(delays) == 6
    for delay, cap in zip(delays, nominal, strict=True):
        assert cap / 2 <= delay <= cap


async def test_connect_gives_up_after_the_configured_retries() -> None:
    port = free_port()  # nothing listens there
    config = DatabaseConfig(connect_retries=2, retry_backoff_s=0.05, connect_timeout_s=1)
    db = Database(f"postgresql://postgres@127.0.0.1:{port}/x", config)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="after 3 attempt"):
        await db.connect()
    assert time.monotonic() - started >= 0.05  # it did wait between attempts
    await db.dispose()


async def test_sqlite_file_is_created_with_wal(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "nested" / "dir" / "h.db"
    db = Database(f"sqlite:///{path}")
    await db.connect()
    async with db.engine.connect() as conn:
        mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        fks = (await conn.execute(text("PRAGMA foreign_keys"))).scalar()
    assert path.is_file()
    assert mode == "wal"
    assert fks == 1
    await db.dispose()


async def test_statement_timeout_on_postgresql(postgres_url: str) -> None:
    db = Database(postgres_url, DatabaseConfig(statement_timeout_ms=200))
    async with db.engine.connect() as conn:
        with pytest.raises(DBAPIError, match="statement timeout"):
            await conn.execute(text("SELECT pg_sleep(5)"))
    await db.dispose()


async def test_pool_figures(postgres_url: str) -> None:
    db = Database(postgres_url, DatabaseConfig(pool_size=3, max_overflow=2))
    await db.connect()
    async with db.engine.connect() as a, db.engine.connect() as b:
        await a.execute(text("SELECT 1"))
        await b.execute(text("SELECT 1"))
        stats = db.pool_stats()
        assert stats.size == 3
        assert stats.checked_out == 2
    assert db.pool_stats().checked_out == 0
    await db.dispose()
