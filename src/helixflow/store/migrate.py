"""Alembic, driven from Python: upgrade, downgrade, status, and the startup schema check."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from helixflow.config import DatabaseConfig
from helixflow.errors import SchemaOutOfDateError
from helixflow.store.database import Database
from helixflow.store.urls import parse_url, redact

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None, output: io.StringIO | None = None) -> Config:
    buffer = output or io.StringIO()
    cfg = Config(stdout=buffer, output_buffer=buffer)
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    url: str
    dialect: str
    current: str | None
    head: str
    pending: list[str]

    @property
    def up_to_date(self) -> bool:
        return not self.pending


class Migrator:
    """Schema migrations of one database."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.script = ScriptDirectory.from_config(alembic_config())

    @property
    def head(self) -> str:
        head = self.script.get_current_head()
        assert head is not None, "no migrations found"
        return head

    async def _run(self, action: Callable[[Connection], Any]) -> Any:
        async with self.database.engine.begin() as conn:
            return await conn.run_sync(action)

    async def current(self) -> str | None:
        def read(conn: Connection) -> str | None:
            return MigrationContext.configure(conn).get_current_revision()

        result: str | None = await self._run(read)
        return result

    async def status(self) -> SchemaStatus:
        current = await self.current()
        pending = [
            rev.revision
            for rev in reversed(list(self.script.iterate_revisions(self.head, current)))
        ]
        return SchemaStatus(
            url=self.database.display_url,
            dialect=self.database.dialect,
            current=current,
            head=self.head,
            pending=pending,
        )

    async def upgrade(self, revision: str = "head") -> None:
        await self._command(command.upgrade, revision)

    async def downgrade(self, revision: str) -> None:
        await self._command(command.downgrade, revision)

    async def _command(self, fn: Callable[[Config, str], None], revision: str) -> None:
        def run(conn: Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            fn(cfg, revision)

        await self._run(run)

    async def ensure_schema(self, config: DatabaseConfig) -> SchemaStatus:
        """Upgrade if allowed by ``auto_upgrade``; otherwise refuse a schema that is behind."""
        status = await self.status()
        if status.up_to_date:
            return status
        allowed = config.auto_upgrade == "always" or (
            config.auto_upgrade == "sqlite" and self.database.dialect == "sqlite"
        )
        if not allowed:
            raise SchemaOutOfDateError(
                f"the schema of {status.url} is at {status.current or 'nothing (empty)'}, "
                f"this release needs {status.head} ({len(status.pending)} migration(s) "
                "pending). Run `helixflow db upgrade` (with the same --config or "
                "HELIXFLOW_DATABASE_URL), then start the server again."
            )
        log.info(
            "upgrading schema of %s from %s to %s",
            status.url,
            status.current or "empty",
            status.head,
        )
        await self.upgrade()
        return await self.status()


def offline_sql(url: str, revision: str = "head", downgrade_from: str | None = None) -> str:
    """The DDL of a migration range for ``url``'s dialect, without connecting to it."""
    output = io.StringIO()
    dialect_only = parse_url(url).set(host=None, username=None, password=None, database=None)
    cfg = alembic_config(dialect_only.render_as_string(hide_password=False), output)
    if downgrade_from is None:
        command.upgrade(cfg, revision, sql=True)
    else:
        command.downgrade(cfg, f"{downgrade_from}:{revision}", sql=True)
    log.debug("rendered offline SQL for %s", redact(url))
    return output.getvalue()
