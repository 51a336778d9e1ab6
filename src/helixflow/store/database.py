"""One async SQLAlchemy engine per process: pool, pre-ping, connect retries, timeouts."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from helixflow.backoff import backoff_delays
from helixflow.config import DatabaseConfig
from helixflow.errors import ConfigurationError, DatabaseUnavailableError
from helixflow.store.urls import async_url, redact, sqlite_path

log = logging.getLogger(__name__)

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    DBAPIError,
    OSError,
    asyncio.TimeoutError,
    ConnectionError,
)
"""What a lost or unreachable database raises through SQLAlchemy and its drivers (with, for
DBAPIError, errors about the data too: see :func:`is_connection_error`)."""


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` says the database is unreachable or the connection was lost; False
    when the database refused the statement itself (a constraint, a value out of range)."""
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    return False


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Connection pool figures, for /metrics and /ready."""

    size: int
    checked_out: int
    checked_in: int
    overflow: int


class Database:
    """The engine, its pool and the dialect-specific connection setup."""

    def __init__(self, url: str | URL, config: DatabaseConfig | None = None) -> None:
        self.config = config or DatabaseConfig()
        self.url = async_url(url)
        self.engine: AsyncEngine = self._create_engine()

    @property
    def dialect(self) -> str:
        """``sqlite``, ``postgresql`` or ``hana``."""
        return self.engine.dialect.name

    @property
    def display_url(self) -> str:
        return redact(self.url)

    def _create_engine(self) -> AsyncEngine:
        cfg = self.config
        backend = self.url.get_backend_name()
        kwargs: dict[str, Any] = {"echo": cfg.echo, "pool_pre_ping": cfg.pool_pre_ping}
        connect_args: dict[str, Any] = {}
        path = sqlite_path(self.url)
        if backend == "sqlite":
            # The busy timeout: how long a writer waits for another's lock.
            connect_args["timeout"] = max(cfg.statement_timeout_ms / 1000, 1.0)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                kwargs |= self._pool_kwargs()
        elif backend == "postgresql":
            connect_args["timeout"] = cfg.connect_timeout_s
            settings = {"application_name": "helixflow"}
            if cfg.statement_timeout_ms:
                settings["statement_timeout"] = str(cfg.statement_timeout_ms)
            connect_args["server_settings"] = settings
            kwargs |= self._pool_kwargs()
        else:  # SAP HANA through hdbcli's asyncio API
            kwargs |= self._pool_kwargs()
        try:
            engine = create_async_engine(self.url, connect_args=connect_args, **kwargs)
        except ModuleNotFoundError as exc:
            extra = "postgres" if backend == "postgresql" else backend
            raise ConfigurationError(
                f"the driver for {backend} is not installed: pip install 'helixflow[{extra}]'"
            ) from exc
        if backend == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine

    def _pool_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "pool_size": cfg.pool_size,
            "max_overflow": cfg.max_overflow,
            "pool_timeout": cfg.pool_timeout_s,
            "pool_recycle": cfg.pool_recycle_s,
        }

    async def ping(self) -> None:
        """One round trip; raises one of CONNECTION_ERRORS when the database is unreachable."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def connect(self) -> None:
        """Wait for the database, retrying with exponential backoff and jitter."""
        cfg = self.config
        delays = backoff_delays(cfg.retry_backoff_s, cfg.retry_backoff_max_s, cfg.connect_retries)
        attempt = 0
        while True:
            attempt += 1
            try:
                await asyncio.wait_for(self.ping(), timeout=cfg.connect_timeout_s * 2)
                if attempt > 1:
                    log.info("database %s reachable after %d attempts", self.display_url, attempt)
                return
            except CONNECTION_ERRORS as exc:
                delay = next(delays, None)
                if delay is None:
                    raise DatabaseUnavailableError(
                        f"database {self.display_url} unreachable after {attempt} attempt(s): "
                        f"{_short(exc)}"
                    ) from exc
                log.warning(
                    "database %s unreachable (%s); retry %d in %.1fs",
                    self.display_url,
                    _short(exc),
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)

    def pool_stats(self) -> PoolStats:
        pool: Any = self.engine.pool

        def figure(name: str) -> int:
            method = getattr(pool, name, None)
            return int(method()) if callable(method) else 0

        return PoolStats(
            size=figure("size"),
            checked_out=figure("checkedout"),
            checked_in=figure("checkedin"),
            overflow=max(figure("overflow"), 0),
        )

    async def dispose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the writer; foreign keys are off by default in SQLite."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _short(exc: BaseException) -> str:
    """The first line of an error, without SQLAlchemy's background link."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return message[:300]
