"""Retention: old telemetry rows are pruned in bounded batches; recent ones stay."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from helixflow.config import TelemetryConfig
from helixflow.store.database import Database
from helixflow.store.repositories.telemetry import RetentionRepository, TelemetryRepository
from helixflow.store.retention import RetentionJob
from helixflow.store.schema import metadata, utcnow
from helixflow.store.telemetry.events import InferenceEvent, RoutingEvent


async def count(db: Database, table: str) -> int:
    async with db.engine.connect() as conn:
        result = await conn.execute(sa.select(sa.func.count()).select_from(metadata.tables[table]))
        return int(result.scalar_one())


async def test_prunes_only_rows_older_than_the_retention(database: Database) -> None:
    now = utcnow()
    events = []
    for i in range(50):
        age = timedelta(days=40) if i < 23 else timedelta(days=2)
        events.append(
            InferenceEvent(
                request_id=f"r{i}",
                created_at=now - age,
                endpoint="completions",
                status="success",
                http_status=200,
                latency_ms=1.0,
            )
        )
        events.append(RoutingEvent(request_id=f"r{i}", created_at=now - age, strategy="direct"))
    await TelemetryRepository(database).insert(events)
    job = RetentionJob(
        RetentionRepository(database), TelemetryConfig(retention_days=30, prune_batch_size=5)
    )
    deleted = await job.run_once(now)
    assert deleted == {"inference_requests": 23, "routing_decisions": 23}
    assert await count(database, "inference_requests") == 27
    assert await count(database, "routing_decisions") == 27
    assert await job.run_once(now) == {"inference_requests": 0, "routing_decisions": 0}


async def test_zero_days_keeps_everything(database: Database) -> None:
    old = InferenceEvent(
        request_id="old",
        created_at=utcnow() - timedelta(days=3650),
        endpoint="completions",
        status="success",
        http_status=200,
        latency_ms=1.0,
    )
    await TelemetryRepository(database).insert([old])
    job = RetentionJob(RetentionRepository(database), TelemetryConfig(retention_days=0))
    assert await job.run_once() == {}
    assert await count(database, "inference_requests") == 1
