"""The telemetry writer: the request path enqueues, a background task writes batches.

States:
- direct: batches go to the database as they fill (``batch_size``) or age (``flush_interval``).
- degraded: the database failed; batches are appended to the disk spool, and the database is
  retried every ``retry_interval``. When it answers, the spool is replayed oldest first, and
  only once it is empty do batches go direct again, so rows arrive in order.
Nothing is dropped: a full queue spills to the spool on the caller's side, and a row the
database refuses for its content (not its availability) is set aside in ``rejected/``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import orjson

from helixflow.config import TelemetryConfig
from helixflow.store.database import is_connection_error
from helixflow.store.telemetry.events import TelemetryEvent
from helixflow.store.telemetry.spool import Spool

log = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 30.0
"""A write that takes longer is treated as a lost connection (and replayed idempotently)."""


class TelemetrySink(Protocol):
    async def insert(self, events: Sequence[TelemetryEvent]) -> int: ...


@dataclass(frozen=True, slots=True)
class WriterHealth:
    state: Literal["ok", "degraded", "stopped"]
    reason: str | None
    queued: int
    spool_bytes: int
    written_total: int
    spooled_total: int
    replayed_total: int
    rejected_total: int
    lag_s: float
    """Age of the oldest event still waiting in memory."""


class TelemetryWriter:
    def __init__(self, sink: TelemetrySink, spool: Spool, config: TelemetryConfig) -> None:
        self._sink = sink
        self._spool = spool
        self._config = config
        # A deque and an event rather than asyncio.Queue: record() is on every request's path.
        self._queue: collections.deque[TelemetryEvent] = collections.deque()
        self._overflow: list[TelemetryEvent] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._degraded_reason: str | None = None
        self._spool_pending = True  # until the first replay finds out
        self._next_retry = 0.0
        self._accepted = 0
        self._progress = asyncio.Event()
        self._settled = 0
        self.written_total = 0
        self.spooled_total = 0
        self.replayed_total = 0
        self.rejected_total = 0

    # --- the request path ------------------------------------------------------------------

    def record(self, event: TelemetryEvent) -> None:
        """Enqueue ``event``: never blocks, never raises. Past ``queue_size`` events are set
        aside for the writer task to spill to disk in one write."""
        self._accepted += 1
        if len(self._queue) < self._config.queue_size:
            self._queue.append(event)
        else:
            self._overflow.append(event)
        if not self._wake.is_set():
            self._wake.set()

    def _spill(self, events: list[TelemetryEvent]) -> None:
        self._spool.append(events)
        self._spool_pending = True
        self.spooled_total += len(events)
        self._settle(len(events))

    def _spill_overflow(self) -> None:
        if self._overflow:
            overflow, self._overflow = self._overflow, []
            self._spill(overflow)

    def _settle(self, count: int) -> None:
        self._settled += count
        self._progress.set()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telemetry-writer")

    async def stop(self) -> None:
        """Write what is queued (to the database, or to the spool if it is down), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=WRITE_TIMEOUT_S + 5)
            except TimeoutError:
                log.warning("telemetry writer did not finish in time; spooling what is left")
            self._task = None
        leftover = self._drain_queue(len(self._queue))
        if leftover:
            self._spill(leftover)
        self._spill_overflow()
        self._spool.close()

    async def flush(self) -> None:
        """Wait until every event recorded so far is in the database, or on disk while the
        database is unreachable."""
        target = self._accepted
        while self._task is not None and not self._task.done():
            settled = self._settled >= target
            if settled and (not self._spool_pending or self._degraded_reason is not None):
                return
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), timeout=0.1)

    def health(self) -> WriterHealth:
        state: Literal["ok", "degraded", "stopped"] = (
            "stopped" if self._task is None else "degraded" if self._degraded_reason else "ok"
        )
        lag = time.time() - self._queue[0].created_at.timestamp() if self._queue else 0.0
        return WriterHealth(
            state=state,
            reason=self._degraded_reason,
            queued=len(self._queue) + len(self._overflow),
            spool_bytes=self._spool.size_bytes,
            written_total=self.written_total,
            spooled_total=self.spooled_total,
            replayed_total=self.replayed_total,
            rejected_total=self.rejected_total,
            lag_s=max(lag, 0.0),
        )

    # --- the background task ---------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._spill_overflow()
            if self._spool_pending and time.monotonic() >= self._next_retry:
                await self._replay()
            batch = await self._next_batch()
            if batch:
                await self._write(batch)
            elif self._stopping:
                return

    async def _next_batch(self) -> list[TelemetryEvent]:
        """Up to ``batch_size`` events: waits for the first, then at most flush_interval."""
        interval = self._config.flush_interval_ms / 1000
        if not self._queue:
            if self._stopping:
                return []
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            if not self._queue:
                return []
        return await self._fill([], time.monotonic() + interval)

    async def _fill(self, batch: list[TelemetryEvent], deadline: float) -> list[TelemetryEvent]:
        size = self._config.batch_size
        while True:
            batch.extend(self._drain_queue(size - len(batch)))
            now = time.monotonic()
            if len(batch) >= size or now >= deadline or self._stopping:
                return batch
            await asyncio.sleep(min(0.005, deadline - now))

    def _drain_queue(self, limit: int) -> list[TelemetryEvent]:
        queue = self._queue
        count = min(limit, len(queue))
        return [queue.popleft() for _ in range(count)]

    async def _write(self, batch: list[TelemetryEvent]) -> None:
        if self._degraded_reason is not None or self._spool_pending:
            self._spill(batch)
            return
        try:
            await self._insert(batch)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self._degrade(exc)
            self._spill(batch)
            return
        self.written_total += len(batch)
        self._settle(len(batch))

    async def _insert(self, batch: Sequence[TelemetryEvent]) -> None:
        """Insert, setting aside rows the database refuses for their content."""
        try:
            await asyncio.wait_for(self._sink.insert(batch), timeout=WRITE_TIMEOUT_S)
        except Exception as exc:
            if is_connection_error(exc):
                raise
            # A row refused for its content: find it by halving the batch, keep the others.
            if len(batch) == 1:
                self._reject(batch[0], exc)
                return
            middle = len(batch) // 2
            await self._insert(batch[:middle])
            await self._insert(batch[middle:])

    def _reject(self, event: TelemetryEvent, exc: Exception) -> None:
        self.rejected_total += 1
        path = self._spool.directory / "rejected.jsonl"
        with path.open("ab") as handle:
            handle.write(
                orjson.dumps(
                    {"kind": event.kind, "data": event, "error": str(exc)[:500]},
                    option=orjson.OPT_APPEND_NEWLINE,
                )
            )
        log.error(
            "telemetry row for request %s refused by the database and kept in %s: %s",
            event.request_id,
            path,
            exc,
        )

    def _degrade(self, exc: BaseException) -> None:
        reason = f"database unreachable: {type(exc).__name__}: {str(exc)[:200]}".rstrip(": ")
        if self._degraded_reason is None:
            log.warning("telemetry: %s; spooling events to %s", reason, self._spool.directory)
        self._degraded_reason = reason
        self._next_retry = time.monotonic() + self._config.retry_interval_ms / 1000

    async def _replay(self) -> None:
        """Write the spool to the database, oldest first, until it is empty (events spilled
        meanwhile included); stop at the first connection error."""
        replayed = 0
        try:
            while segments := self._spool.segments():
                for path in segments:
                    for batch in self._spool.read(path, self._config.batch_size):
                        await self._insert(batch)
                        replayed += len(batch)
                    self._spool.remove(path)
                self._spill_overflow()
        except Exception as exc:
            self.replayed_total += replayed
            if not is_connection_error(exc):
                raise
            self._degrade(exc)
            return
        self.replayed_total += replayed
        self._spool_pending = False
        if self._degraded_reason is not None or replayed:
            log.info("telemetry: database reachable; replayed %d spooled event(s)", replayed)
        self._degraded_reason = None
