"""The store of one process: database, schema check, telemetry writer and retention job."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from helixflow.config import Settings
from helixflow.store.database import Database
from helixflow.store.migrate import Migrator, SchemaStatus
from helixflow.store.repositories.telemetry import RetentionRepository, TelemetryRepository
from helixflow.store.retention import RetentionJob
from helixflow.store.telemetry.events import TelemetryEvent
from helixflow.store.telemetry.spool import Spool
from helixflow.store.telemetry.writer import TelemetryWriter, WriterHealth

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Store:
    database: Database
    schema: SchemaStatus
    writer: TelemetryWriter | None
    retention: RetentionJob

    @classmethod
    async def open(cls, settings: Settings) -> Store:
        """Connect (with retries), check or upgrade the schema, start the background work."""
        database = Database(settings.database_url, settings.database)
        try:
            await database.connect()
            schema = await Migrator(database).ensure_schema(settings.database)
        except BaseException:
            await database.dispose()
            raise
        log.info("database %s at schema %s", database.display_url, schema.current)
        tcfg = settings.telemetry
        writer = None
        if tcfg.enabled:
            spool = Spool(
                settings.spool_dir,
                segment_bytes=tcfg.spool_segment_bytes,
                fsync=tcfg.spool_fsync,
                fsync_interval_s=tcfg.spool_fsync_interval_ms / 1000,
            )
            writer = TelemetryWriter(TelemetryRepository(database), spool, tcfg)
            await writer.start()
        retention = RetentionJob(RetentionRepository(database), tcfg)
        retention.start()
        return cls(database, schema, writer, retention)

    def record(self, event: TelemetryEvent) -> None:
        """Hand ``event`` to the writer (microseconds; never waits on the database)."""
        if self.writer is not None:
            self.writer.record(event)

    def telemetry_health(self) -> WriterHealth | None:
        return None if self.writer is None else self.writer.health()

    async def close(self) -> None:
        await self.retention.stop()
        if self.writer is not None:
            await self.writer.stop()
        await self.database.dispose()
