"""The telemetry writer: batches, zero loss through outages, replay on restart, no duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from helixflow.config import DatabaseConfig, TelemetryConfig
from helixflow.store.database import Database
from helixflow.store.migrate import Migrator
from helixflow.store.repositories.telemetry import TelemetryRepository
from helixflow.store.schema import metadata
from helixflow.store.telemetry.events import TelemetryEvent
from helixflow.store.telemetry.spool import Spool
from helixflow.store.telemetry.writer import TelemetryWriter
from helixflow.store.urls import parse_url
from tests.store.factories import inference_event as event
from tests.tcp_proxy import TcpProxy

FAST = TelemetryConfig(batch_size=50, flush_interval_ms=20, retry_interval_ms=50)


async def stored_ids(db: Database) -> list[str]:
    table = metadata.tables["inference_requests"]
    async with db.engine.connect() as conn:
        return list((await conn.execute(sa.select(table.c.request_id))).scalars())


async def wait_for(condition: Callable[[], bool], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 (polls state owned by the writer)
            await asyncio.sleep(0.02)


class FlakySink:
    """A sink whose database 'goes away' while ``down`` is set."""

    def __init__(self, inner: TelemetryRepository) -> None:
        self.inner = inner
        self.down = False
        self.calls = 0

    async def insert(self, events: Sequence[TelemetryEvent]) -> int:
        self.calls += 1
        if self.down:
            raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))
        return await self.inner.insert(events)


async def test_events_are_written_in_batches(database: Database, tmp_path: Path) -> None:
    writer = TelemetryWriter(TelemetryRepository(database), Spool(tmp_path), FAST)
    await writer.start()
    for i in range(500):
        writer.record(event(i))
    await writer.flush()
    await writer.stop()
    ids = await stored_ids(database)
    assert sorted(ids) == [f"req-{i:06d}" for i in range(500)]
    health = writer.health()
    assert health.written_total == 500
    assert health.spooled_total == 0


async def test_outage_spools_then_replays_without_loss_or_duplicates(
    database: Database, tmp_path: Path
) -> None:
    sink = FlakySink(TelemetryRepository(database))
    writer = TelemetryWriter(sink, Spool(tmp_path / "spool"), FAST)
    await writer.start()
    for i in range(100):
        writer.record(event(i))
    await writer.flush()
    sink.down = True
    for i in range(100, 400):
        writer.record(event(i))
        if i % 50 == 0:
            await asyncio.sleep(0.03)
    await writer.flush()
    health = writer.health()
    assert health.state == "degraded"
    assert "unreachable" in (health.reason or "")
    assert health.spool_bytes > 0
    assert len(await stored_ids(database)) == 100
    sink.down = False
    await wait_for(lambda: writer.health().state == "ok")
    for i in range(400, 450):
        writer.record(event(i))
    await writer.flush()
    await writer.stop()
    ids = await stored_ids(database)
    assert len(ids) == len(set(ids)) == 450
    assert writer.health().spool_bytes == 0
    assert writer.health().replayed_total == 300


async def test_restart_with_a_non_empty_spool_replays_it(
    database: Database, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    down = FlakySink(TelemetryRepository(database))
    down.down = True
    first = TelemetryWriter(down, Spool(spool_dir), FAST)
    await first.start()
    for i in range(120):
        first.record(event(i))
    await first.stop()  # the process ends while the database is away
    assert Spool(spool_dir).size_bytes > 0
    assert await stored_ids(database) == []

    second = TelemetryWriter(TelemetryRepository(database), Spool(spool_dir), FAST)
    await second.start()
    await wait_for(lambda: second.health().replayed_total == 120)
    await second.stop()
    assert sorted(await stored_ids(database)) == [f"req-{i:06d}" for i in range(120)]
    assert Spool(spool_dir).empty


async def test_crash_after_insert_before_spool_removal_duplicates_nothing(
    database: Database, tmp_path: Path
) -> None:
    spool = Spool(tmp_path)
    events = [event(i) for i in range(60)]
    spool.append(events)
    spool.close()
    # The previous process inserted the first half of the segment, then died.
    await TelemetryRepository(database).insert(events[:30])
    writer = TelemetryWriter(TelemetryRepository(database), Spool(tmp_path), FAST)
    await writer.start()
    await wait_for(lambda: writer.health().replayed_total == 60)
    await writer.stop()
    ids = await stored_ids(database)
    assert len(ids) == len(set(ids)) == 60


async def test_full_queue_spills_to_disk_instead_of_dropping(
    database: Database, tmp_path: Path
) -> None:
    config = FAST.model_copy(update={"queue_size": 10})
    writer = TelemetryWriter(TelemetryRepository(database), Spool(tmp_path), config)
    for i in range(100):  # the writer is not running yet: the queue fills up
        writer.record(event(i))
    assert writer.health().queued == 100  # 10 queued, 90 set aside for one spill
    await writer.start()
    await writer.flush()
    await writer.stop()
    assert writer.health().spooled_total == 90
    assert writer.health().replayed_total == 90
    assert len(set(await stored_ids(database))) == 100


async def test_events_spilled_during_a_replay_are_not_stranded(
    database: Database, tmp_path: Path
) -> None:
    config = FAST.model_copy(update={"queue_size": 5, "batch_size": 10})
    writer = TelemetryWriter(TelemetryRepository(database), Spool(tmp_path), config)
    await writer.start()
    for i in range(2000):  # far more than the queue holds: most of it goes through the spool
        writer.record(event(i))
        if i % 97 == 0:
            await asyncio.sleep(0)
    await writer.flush()
    assert len(set(await stored_ids(database))) == 2000
    assert writer.health().spool_bytes == 0
    await writer.stop()


async def test_a_row_refused_for_its_content_is_set_aside(
    database: Database, tmp_path: Path
) -> None:
    class PickySink:
        def __init__(self, inner: TelemetryRepository) -> None:
            self.inner = inner

        async def insert(self, events: Sequence[TelemetryEvent]) -> int:
            if any(e.request_id == "req-000007" for e in events):
                raise ValueError("value out of range")
            return await self.inner.insert(events)

    writer = TelemetryWriter(PickySink(TelemetryRepository(database)), Spool(tmp_path), FAST)
    await writer.start()
    for i in range(20):
        writer.record(event(i))
    await writer.flush()
    await writer.stop()
    assert len(await stored_ids(database)) == 19
    assert writer.health().rejected_total == 1
    assert "req-000007" in (tmp_path / "rejected.jsonl").read_text()


async def test_a_value_the_database_refuses_is_not_an_outage(
    postgres_url: str, tmp_path: Path
) -> None:
    db = Database(postgres_url)
    await Migrator(db).upgrade()
    writer = TelemetryWriter(TelemetryRepository(db), Spool(tmp_path), FAST)
    await writer.start()
    for i in range(30):
        # http_status is a SMALLINT: 70000 is out of range on PostgreSQL.
        writer.record(event(i, http_status=70000 if i == 12 else 200))
    await writer.flush()
    health = writer.health()
    await writer.stop()
    assert health.state == "ok"
    assert health.rejected_total == 1
    assert len(await stored_ids(db)) == 29
    await db.dispose()


@pytest.fixture
async def proxied(postgres_url: str) -> AsyncIterator[tuple[TcpProxy, Database, Database]]:
    """A migrated PostgreSQL database, reached directly and through a TCP proxy."""
    url = parse_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    direct = Database(postgres_url)
    await Migrator(direct).upgrade()
    config = DatabaseConfig(connect_timeout_s=1, pool_timeout_s=1, statement_timeout_ms=2000)
    through = Database(url.set(host="127.0.0.1", port=proxy.port), config)
    try:
        yield proxy, through, direct
    finally:
        await proxy.close()
        await through.dispose()
        await direct.dispose()


async def test_postgresql_connection_cut_mid_burst(
    proxied: tuple[TcpProxy, Database, Database], tmp_path: Path
) -> None:
    proxy, through, direct = proxied
    writer = TelemetryWriter(TelemetryRepository(through), Spool(tmp_path), FAST)
    await writer.start()
    total = 3000
    for i in range(total):
        writer.record(event(i))
        if i == 1000:
            await asyncio.sleep(0.1)  # some batches are in the database by now
            await proxy.cut()
        if i % 100 == 0:
            await asyncio.sleep(0.005)
    await writer.flush()
    assert writer.health().state == "degraded"
    assert writer.health().spooled_total > 0
    await proxy.restore()
    await wait_for(lambda: writer.health().state == "ok", within=30)
    await writer.stop()
    ids = await stored_ids(direct)
    assert len(ids) == total
    assert len(set(ids)) == total
