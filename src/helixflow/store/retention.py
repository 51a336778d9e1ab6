"""The periodic job that keeps telemetry tables to ``telemetry.retention_days``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from helixflow.config import TelemetryConfig
from helixflow.store.database import CONNECTION_ERRORS
from helixflow.store.repositories.telemetry import RetentionRepository
from helixflow.store.schema import utcnow

log = logging.getLogger(__name__)

FIRST_RUN_DELAY_S = 60.0
PAUSE_BETWEEN_BATCHES_S = 0.05
"""Lets other writers in between delete batches, so pruning never stalls the database."""


class RetentionJob:
    def __init__(self, repository: RetentionRepository, config: TelemetryConfig) -> None:
        self._repository = repository
        self._config = config
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, now: datetime | None = None) -> dict[str, int]:
        """Prune every telemetry table; returns rows deleted per table."""
        days = self._config.retention_days
        if days <= 0:
            return {}
        cutoff = (now or utcnow()) - timedelta(days=days)
        deleted: dict[str, int] = {}
        for table in self._repository.TABLES:
            total = 0
            while True:
                count = await self._repository.prune_batch(
                    table, cutoff, self._config.prune_batch_size
                )
                total += count
                if count < self._config.prune_batch_size:
                    break
                await asyncio.sleep(PAUSE_BETWEEN_BATCHES_S)
            deleted[table.name] = total
        if any(deleted.values()):
            log.info("retention: pruned rows older than %s: %s", cutoff.isoformat(), deleted)
        return deleted

    def start(self, first_run_delay_s: float = FIRST_RUN_DELAY_S) -> None:
        if self._config.retention_days > 0:
            self._task = asyncio.create_task(self._loop(first_run_delay_s), name="retention")

    async def _loop(self, delay: float) -> None:
        while True:
            await asyncio.sleep(delay)
            delay = self._config.prune_interval_s
            try:
                await self.run_once()
            except CONNECTION_ERRORS as exc:
                log.warning("retention: database unreachable, will retry: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
