"""Telemetry ingest: how fast the TelemetryWriter stores request rows, and what it costs.

Against a fresh PostgreSQL database that it creates on ``--dsn``'s server, migrates, and drops
afterwards (or a temporary SQLite file with ``--database sqlite``), in one process and one
event loop (uvloop where installed, as the server runs), this measures:

1. Sustained ingest. ``--producers`` coroutines call ``writer.record(InferenceEvent(...))``
   with realistic, varied rows (endpoints, models, providers, errors, token counts, costs,
   optional ids; about 1 % with an over-long ``end_user`` that the store must cut) for
   ``--duration`` seconds, then ``flush()``. Rows/s is the number of rows counted in
   ``inference_requests`` at the end over the time from the first record to the end of the
   flush; the count must equal the rows recorded (nothing lost) and the distinct request ids
   (nothing doubled), and ``insert()``'s own count of new rows must agree.
   With ``--rate 0`` (the default) the producers go as fast as the writer takes rows: one
   pauses while more than ``--high-water`` rows wait in memory, so the figure is the writer's
   capacity, not the spool's. With ``--rate N`` they offer N rows/s open-loop, as request
   handlers would; a writer that falls behind fills its queue and spills to the disk spool
   (reported), and the target counts as met if it kept up: nothing spilled, and the rows left
   at the end flushed within a second.
   Also reported: the writer's lag (its health's ``lag_s``, sampled every second: the age of
   the oldest event still waiting in memory), the commit lag (from an event's
   creation to the commit of its batch, for the oldest row of each batch), the batch sizes the
   writer actually used, the time of one ``insert()``, this process's CPU, the CPU of the
   database's backends (PostgreSQL on this machine) and of everything else on the machine: on a
   shared machine other processes' load lowers every figure.
2. Enqueue cost: every ``record()`` call is timed with ``time.perf_counter_ns`` while the
   writer runs (p50, p99, mean, max in microseconds; the timer's own cost is printed, not
   subtracted).
3. Memory: this process's RSS from ``/proc/self/statm`` every second: start, max, end, and the
   least-squares slope in MiB/min over the second half of the run (flat is near 0). The issue
   asks for a 10-minute run for this: ``--duration 600``.

A naive peer runs in the same invocation on the emptied table for ``--baseline-duration``
seconds: what a simple per-request logger does, one INSERT per event in its own transaction
through SQLAlchemy, from ``--baseline-concurrency`` concurrent "requests". The writer / naive
rows/s ratio is printed, and the naive logger's time per insert, which a request would wait.

Targets (printed beside the figures; goals, not asserts): >= 20,000 rows/s sustained into
PostgreSQL, record() < 20 us, memory flat. Before measuring, a short warm-up (``--warmup``)
fills connection pools and statement caches; its rows are removed.

Examples:
  .venv/bin/python benchmarks/telemetry_ingest.py --duration 20
  .venv/bin/python benchmarks/telemetry_ingest.py --duration 600 \\
      --json-out benchmarks/results/telemetry_ingest.json
  .venv/bin/python benchmarks/telemetry_ingest.py --rate 20000 --database postgresql,sqlite
  .venv/bin/python benchmarks/telemetry_ingest.py --duration 10 --profile /tmp/ingest.prof

The PostgreSQL server is ``--dsn`` (default: $HELIXFLOW_TEST_POSTGRES_DSN, else
postgresql://postgres@127.0.0.1:5432/postgres); its user must be allowed CREATE DATABASE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import delete, func, select, text

from _common import machine_busy_seconds, percentile, process_cpu_seconds, run_metadata
from helixflow.api.middleware import time_ordered_id
from helixflow.config import DatabaseConfig, TelemetryConfig
from helixflow.store.database import Database
from helixflow.store.migrate import Migrator
from helixflow.store.repositories.telemetry import TelemetryRepository
from helixflow.store.schema import InferenceRequest, table_of, utcnow
from helixflow.store.telemetry.events import InferenceEvent, TelemetryEvent
from helixflow.store.telemetry.spool import Spool
from helixflow.store.telemetry.writer import TelemetryWriter
from helixflow.store.urls import parse_url

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASES = ("postgresql", "sqlite")
TABLE = table_of(InferenceRequest)

# The issue's targets: goals to print beside the figures, never asserts.
TARGET_ROWS_S = 20_000
TARGET_ENQUEUE_US = 20.0
FLAT_MIB_PER_MIN = 1.0
"""|slope| below this over the second half counts as flat (10 MiB over a 10-minute run)."""

console = Console(width=max(120, shutil.get_terminal_size().columns))


# --------------------------------------------------------------------------- realistic rows

# (requested model, served model, provider, $ per input Mtok, $ per output Mtok, weight)
MODELS: tuple[tuple[str, str, str, float, float, int], ...] = (
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "openai", 0.15, 0.6, 30),
    ("gpt-4o", "gpt-4o-2024-08-06", "openai", 2.5, 10.0, 10),
    ("claude-3-5-haiku", "claude-3-5-haiku-20241022", "anthropic", 0.8, 4.0, 12),
    ("smollm2", "smollm2-135m", "local", 0.0, 0.0, 20),
    ("gemma3-270m", "gemma3-270m", "local", 0.0, 0.0, 10),
    ("llama-3.1-8b-instruct", "llama-3.1-8b-instruct", "vllm-pool-a", 0.05, 0.08, 12),
    ("auto", "mistral-small-2409", "mistral", 0.2, 0.6, 6),
)
ENDPOINTS = (("chat.completions", 80), ("completions", 8), ("embeddings", 12))
# (status, http status, error type, error code, weight); successes are the rest.
FAILURES = (
    ("error", 400, "invalid_request_error", "context_length_exceeded", 15),
    ("error", 401, "authentication_error", "invalid_api_key", 5),
    ("error", 429, "rate_limit_error", "rate_limited", 20),
    ("error", 502, "server_error", "upstream_error", 6),
    ("error", 503, "server_error", "overloaded", 4),
    ("cancelled", 499, None, None, 10),
)
FAILURE_SHARE = 0.06
TEMPLATES = 4096
"""Distinct pre-built rows; each event gets a new request id and timestamp."""


def _weighted(items: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [item for item in items for _ in range(item[-1])]


class EventFactory:
    """Varied InferenceEvents, as the API's telemetry middleware builds them.

    The rows' contents come from a pool of pre-built templates (so that building an event
    costs about as much as the middleware's ``RequestRecord.event()``, ~2 us); every event gets
    a fresh 32-hex request id and the current time. Request ids are random, like the server's
    ``uuid4().hex``, or with ``time_ordered`` the server's own time-ordered ids
    (``time_ordered_id()``), which keep the unique index on request_id appending at its end.
    """

    def __init__(self, seed: int, *, time_ordered: bool = False) -> None:
        self.rng = random.Random(seed)
        self.time_ordered = time_ordered
        self.templates = [self._template() for _ in range(TEMPLATES)]
        self.made = 0

    def _template(self) -> dict[str, Any]:
        rng = self.rng
        requested, served, provider, price_in, price_out, _ = rng.choice(_weighted(MODELS))
        endpoint = rng.choice(_weighted(ENDPOINTS))[0]
        embeddings = endpoint == "embeddings"
        streamed = not embeddings and rng.random() < 0.6
        prompt = max(1, int(rng.lognormvariate(5.5, 1.1)))
        completion = 0 if embeddings else max(1, int(rng.lognormvariate(4.5, 1.0)))
        cached = int(prompt * rng.choice((0, 0, 0, 0.5, 0.9)))
        row: dict[str, Any] = {
            "endpoint": endpoint,
            "status": "success",
            "http_status": 200,
            "requested_model": requested,
            "served_model": served,
            "provider": provider,
            "finish_reason": None if embeddings else rng.choice(("stop",) * 8 + ("length",)),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cached_tokens": cached,
            "latency_ms": round(rng.lognormvariate(6.3, 0.9), 3),
            "ttft_ms": round(rng.lognormvariate(4.8, 0.7), 3) if streamed else None,
            "cost_usd": round((prompt * price_in + completion * price_out) / 1e6, 10),
            "streamed": streamed,
            "cache_hit": cached > 0,
            "api_key_id": f"key_{rng.randrange(64):04d}",
            "user_id": f"user_{rng.randrange(2000):05d}" if rng.random() < 0.8 else None,
            "end_user": f"customer-{rng.randrange(10**6)}@example.com"
            if rng.random() < 0.3
            else None,
            "agent_id": rng.choice(("planner", "coder", "reviewer", "support-bot"))
            if rng.random() < 0.25
            else None,
            "client_request_id": str(uuid.UUID(int=rng.getrandbits(128)))
            if rng.random() < 0.2
            else None,
        }
        if rng.random() < 0.1:
            row["experiment_id"] = f"exp-{rng.randrange(8)}"
            row["experiment_arm"] = rng.choice(("control", "treatment"))
        if rng.random() < FAILURE_SHARE:
            status, http_status, error_type, error_code, _ = rng.choice(_weighted(FAILURES))
            row |= {
                "status": status,
                "http_status": http_status,
                "error_type": error_type,
                "error_code": error_code,
                "finish_reason": None,
                "completion_tokens": 0,
                "cost_usd": 0.0,
                "ttft_ms": None,
            }
        if rng.random() < 0.01:  # longer than the column (256): cut by the store, not refused
            row["end_user"] = "x" * 300
        return row

    def make(self) -> InferenceEvent:
        self.made += 1
        random_id = f"{self.rng.getrandbits(128):032x}"
        request_id = time_ordered_id() if self.time_ordered else random_id
        return InferenceEvent(
            request_id=request_id,
            created_at=utcnow(),
            **self.templates[self.made % TEMPLATES],
        )


# --------------------------------------------------------------------------- measurements


class Histogram:
    """Fixed-memory latency histogram: 10 ns buckets below 100 us, 10 us buckets to 1 s."""

    FINE_NS = 10
    FINE_N = 10_000
    COARSE_NS = 10_000
    COARSE_N = 100_000

    def __init__(self) -> None:
        self.fine = array("q", bytes(8 * self.FINE_N))
        self.coarse = array("q", bytes(8 * self.COARSE_N))
        self.count = 0
        self.total_ns = 0
        self.max_ns = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns
        i = ns // self.FINE_NS
        if i < self.FINE_N:
            self.fine[i] += 1
        else:
            self.coarse[min(ns // self.COARSE_NS, self.COARSE_N - 1)] += 1

    def percentile_ns(self, q: float) -> float | None:
        """The bucket middle under which ``q`` % of the values lie."""
        if not self.count:
            return None
        rank = q / 100 * self.count
        seen = 0
        for i, n in enumerate(self.fine):
            seen += n
            if n and seen >= rank:
                return (i + 0.5) * self.FINE_NS
        for i, n in enumerate(self.coarse):
            seen += n
            if n and seen >= rank:
                return (i + 0.5) * self.COARSE_NS
        return float(self.max_ns)

    def summary_us(self) -> dict[str, Any]:
        def us(ns: float | None) -> float | None:
            return None if ns is None else round(ns / 1000, 3)

        return {
            "calls": self.count,
            "p50_us": us(self.percentile_ns(50)),
            "p99_us": us(self.percentile_ns(99)),
            "p999_us": us(self.percentile_ns(99.9)),
            "mean_us": us(self.total_ns / self.count) if self.count else None,
            "max_us": us(self.max_ns),
        }


def timer_overhead_ns() -> float:
    """The median cost of one perf_counter_ns() pair, which every timed call includes."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20_000):
        t0 = clock()
        t1 = clock()
        samples.append(t1 - t0)
    return float(statistics.median(samples))


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mib() -> float | None:
    """This process's resident set size from /proc/self/statm; None where there is none."""
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident * PAGE_SIZE / 2**20


def slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 3:
        return None
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx * 60


def postgres_backend_cpu_s(dbname: str) -> float | None:
    """User + system CPU of the server processes serving ``dbname`` (local servers only)."""
    total = 0.0
    found = False
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if not cmdline.startswith(b"postgres: ") or f" {dbname} ".encode() not in cmdline:
            continue
        cpu_s = process_cpu_seconds(pid)
        if cpu_s is not None:
            total += cpu_s
            found = True
    return total if found else None


class MeasuringSink:
    """The repository, with the batches the writer hands it and the time each insert takes."""

    def __init__(self, inner: TelemetryRepository) -> None:
        self.inner = inner
        self.reset()

    def reset(self) -> None:
        self.batch_sizes = array("i")
        self.insert_s = array("d")
        self.commit_lag_s = array("d")
        self.reported_new = 0

    async def insert(self, events: Sequence[TelemetryEvent]) -> int:
        t0 = time.perf_counter()
        new = await self.inner.insert(events)
        self.insert_s.append(time.perf_counter() - t0)
        self.batch_sizes.append(len(events))
        if events:
            oldest = min(e.created_at for e in events)
            self.commit_lag_s.append((utcnow() - oldest).total_seconds())
        self.reported_new += new
        return new


# --------------------------------------------------------------------------- databases


async def _admin(dsn: str, statement: str) -> None:
    import asyncpg

    url = parse_url(dsn)
    conn = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database=url.database or "postgres",
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


PG_SETTINGS = (
    "server_version",
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "full_page_writes",
    "wal_buffers",
    "max_wal_size",
)
"""Server settings that move the figures, printed and kept in the JSON."""


@dataclass(slots=True)
class BenchDatabase:
    kind: str
    url: str
    name: str
    database: Database
    settings: dict[str, str] = field(default_factory=dict)


async def server_settings(database: Database) -> dict[str, str]:
    if database.dialect != "postgresql":
        return {}
    async with database.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(:n)"),
                {"n": list(PG_SETTINGS)},
            )
        ).all()
    return {str(name): str(value) for name, value in rows}


@contextlib.asynccontextmanager
async def fresh_database(kind: str, dsn: str, keep: bool) -> AsyncIterator[BenchDatabase]:
    """A new, migrated database of ``kind``; dropped (PostgreSQL) or deleted (SQLite) after."""
    workdir = Path(tempfile.mkdtemp(prefix="helixflow-ingest-"))
    name = f"hf_bench_{uuid.uuid4().hex[:12]}"
    if kind == "postgresql":
        await _admin(dsn, f'CREATE DATABASE "{name}"')
        url = parse_url(dsn).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{workdir / 'helixflow.db'}"
    database = Database(url, DatabaseConfig())
    try:
        await database.connect()
        await Migrator(database).upgrade()
        yield BenchDatabase(kind, url, name, database, await server_settings(database))
    finally:
        await database.dispose()
        if keep:
            console.print(f"kept {kind} database {escape(url)}", style="dim")
        else:
            if kind == "postgresql":
                await _admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            shutil.rmtree(workdir, ignore_errors=True)


async def count_rows(database: Database) -> tuple[int, int]:
    """Rows of inference_requests and distinct request ids among them."""
    async with database.engine.connect() as conn:
        row = (
            await conn.execute(
                select(func.count(), func.count(TABLE.c.request_id.distinct())).select_from(TABLE)
            )
        ).one()
    return int(row[0]), int(row[1])


async def empty_table(database: Database) -> None:
    async with database.engine.begin() as conn:
        if database.dialect == "postgresql":
            await conn.execute(text(f"TRUNCATE {TABLE.name}"))
        else:
            await conn.execute(delete(TABLE))


# --------------------------------------------------------------------------- the writer run


@dataclass(slots=True)
class RunConfig:
    duration: float
    rate: float
    producers: int
    high_water: int
    warmup: float
    telemetry: TelemetryConfig
    baseline_duration: float
    baseline_concurrency: int
    seed: int
    profile: Path | None
    time_ordered_ids: bool = True


@dataclass(slots=True)
class Sample:
    t: float
    rss_mib: float | None
    lag_s: float
    queued: int
    written: int


@dataclass(slots=True)
class IngestResult:
    recorded: int = 0
    committed: int = 0
    distinct: int = 0
    produce_s: float = 0.0
    flush_s: float = 0.0
    cpu_s: float = 0.0
    db_cpu_s: float | None = None
    machine_cpu_s: float | None = None
    spooled: int = 0
    spool_left_bytes: int = 0
    replayed: int = 0
    rejected: int = 0
    reported_new: int = 0
    enqueue: Histogram = field(default_factory=Histogram)
    samples: list[Sample] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    insert_s: list[float] = field(default_factory=list)
    commit_lag_s: list[float] = field(default_factory=list)

    @property
    def elapsed_s(self) -> float:
        return self.produce_s + self.flush_s

    @property
    def rows_s(self) -> float:
        return self.committed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def kept_up(self, cfg: TelemetryConfig) -> bool:
        """The writer took the rows as they came: only the last batches were left to flush."""
        return self.spooled == 0 and self.flush_s <= max(1.0, 3 * cfg.flush_interval_ms / 1000)

    @property
    def lossless(self) -> bool:
        return self.committed == self.recorded == self.distinct

    def memory(self) -> dict[str, float | None]:
        rss = [(s.t, s.rss_mib) for s in self.samples if s.rss_mib is not None]
        if not rss:
            return {"start_mib": None, "max_mib": None, "end_mib": None, "slope_mib_min": None}
        half = self.produce_s / 2
        return {
            "start_mib": round(rss[0][1], 1),
            "max_mib": round(max(v for _, v in rss), 1),
            "end_mib": round(rss[-1][1], 1),
            "slope_mib_min": _round(
                slope_per_min([(t, v) for t, v in rss if half <= t <= self.produce_s]), 3
            ),
        }

    def summary(self) -> dict[str, Any]:
        lags = [s.lag_s for s in self.samples]
        return {
            "recorded": self.recorded,
            "committed": self.committed,
            "distinct_request_ids": self.distinct,
            "lossless": self.lossless,
            "insert_reported_new": self.reported_new,
            "produce_s": round(self.produce_s, 3),
            "flush_s": round(self.flush_s, 3),
            "rows_s": round(self.rows_s, 1),
            "offered_rows_s": round(self.recorded / self.produce_s, 1) if self.produce_s else 0,
            "process_cpu_pct": round(100 * self.cpu_s / self.elapsed_s, 1),
            "process_cpu_us_per_row": round(1e6 * self.cpu_s / self.committed, 2)
            if self.committed
            else None,
            "db_backend_cpu_pct": round(100 * self.db_cpu_s / self.elapsed_s, 1)
            if self.db_cpu_s is not None
            else None,
            "machine_cpu_busy_pct": round(
                100 * self.machine_cpu_s / self.elapsed_s / (os.cpu_count() or 1), 1
            )
            if self.machine_cpu_s is not None
            else None,
            "other_processes_cpu_pct": round(
                100 * (self.machine_cpu_s - self.cpu_s - (self.db_cpu_s or 0)) / self.elapsed_s,
                1,
            )
            if self.machine_cpu_s is not None
            else None,
            "spooled": self.spooled,
            "spool_left_bytes": self.spool_left_bytes,
            "replayed": self.replayed,
            "rejected": self.rejected,
            "enqueue": self.enqueue.summary_us(),
            "writer_lag_s": {
                "p50": _round(percentile(lags, 50), 3),
                "max": _round(max(lags, default=None), 3),
            },
            "commit_lag_ms": {
                "p50": _ms(percentile(self.commit_lag_s, 50)),
                "p99": _ms(percentile(self.commit_lag_s, 99)),
                "max": _ms(max(self.commit_lag_s, default=None)),
            },
            "batches": {
                "count": len(self.batch_sizes),
                "mean": round(statistics.fmean(self.batch_sizes), 1) if self.batch_sizes else None,
                "p50": _round(percentile(self.batch_sizes, 50), 1),
                "max": max(self.batch_sizes, default=None),
                "insert_p50_ms": _ms(percentile(self.insert_s, 50)),
                "insert_p99_ms": _ms(percentile(self.insert_s, 99)),
                "insert_us_per_row": round(1e6 * sum(self.insert_s) / sum(self.batch_sizes), 2)
                if self.batch_sizes
                else None,
            },
            "memory": self.memory(),
            "samples": [
                {
                    "t": round(s.t, 2),
                    "rss_mib": _round(s.rss_mib, 2),
                    "lag_s": round(s.lag_s, 3),
                    "queued": s.queued,
                    "written": s.written,
                }
                for s in self.samples
            ],
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def make_writer(
    database: Database, cfg: TelemetryConfig, spool_dir: Path
) -> tuple[TelemetryWriter, MeasuringSink]:
    sink = MeasuringSink(TelemetryRepository(database))
    spool = Spool(
        spool_dir,
        segment_bytes=cfg.spool_segment_bytes,
        fsync=cfg.spool_fsync,
        fsync_interval_s=cfg.spool_fsync_interval_ms / 1000,
    )
    return TelemetryWriter(sink, spool, cfg), sink


class Producers:
    """``count`` coroutines recording events: open-loop at ``rate`` rows/s, or as fast as the
    writer takes them (``rate`` 0) with at most ``high_water`` rows waiting in memory."""

    CHUNK = 64

    def __init__(
        self,
        writer: TelemetryWriter,
        factory: EventFactory,
        histogram: Histogram,
        *,
        count: int,
        rate: float,
        high_water: int,
    ) -> None:
        self.writer = writer
        self.factory = factory
        self.histogram = histogram
        self.count = count
        self.rate = rate
        self.high_water = high_water
        self.recorded = 0

    async def run(self, duration: float) -> None:
        deadline = time.perf_counter() + duration
        await asyncio.gather(*(self._one(deadline) for _ in range(self.count)))

    def _burst(self, n: int) -> None:
        clock = time.perf_counter_ns
        record = self.writer.record
        make = self.factory.make
        add = self.histogram.add
        for _ in range(n):
            event = make()
            t0 = clock()
            record(event)
            add(clock() - t0)
        self.recorded += n

    async def _one(self, deadline: float) -> None:
        if self.rate > 0:
            await self._paced(deadline, self.rate / self.count)
            return
        writer = self.writer
        while time.perf_counter() < deadline:
            in_memory = self.recorded - writer.written_total - writer.spooled_total
            if in_memory > self.high_water:
                await asyncio.sleep(0.001)
                continue
            self._burst(self.CHUNK)
            await asyncio.sleep(0)

    async def _paced(self, deadline: float, rate: float) -> None:
        start = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) < deadline:
            due = int((now - start) * rate) - sent
            if due > 0:
                n = min(due, 4 * self.CHUNK)
                self._burst(n)
                sent += n
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.001)


async def sample_every_second(
    writer: TelemetryWriter, samples: list[Sample], t0: float, stop: asyncio.Event
) -> None:
    while True:
        health = writer.health()
        samples.append(
            Sample(
                t=time.perf_counter() - t0,
                rss_mib=rss_mib(),
                lag_s=health.lag_s,
                queued=health.queued,
                written=health.written_total,
            )
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        if stop.is_set():
            return


async def wait_for_spool(writer: TelemetryWriter) -> bool:
    """After flush(): spilled rows are settled but still on disk until the writer replays
    them (it does so between batches); wait for that, two minutes at most."""
    for _ in range(1200):
        if writer.spooled_total <= writer.replayed_total:
            return True
        await asyncio.sleep(0.1)
    return False


async def warm_up(bench: BenchDatabase, cfg: RunConfig, workdir: Path) -> None:
    if cfg.warmup <= 0:
        return
    writer, _ = make_writer(bench.database, cfg.telemetry, workdir / "warmup-spool")
    await writer.start()
    producers = Producers(
        writer,
        EventFactory(cfg.seed + 1, time_ordered=cfg.time_ordered_ids),
        Histogram(),
        count=cfg.producers,
        rate=0,
        high_water=cfg.high_water,
    )
    await producers.run(cfg.warmup)
    await writer.flush()
    await wait_for_spool(writer)
    await writer.stop()
    await empty_table(bench.database)


async def run_ingest(bench: BenchDatabase, cfg: RunConfig, workdir: Path) -> IngestResult:
    await warm_up(bench, cfg, workdir)
    writer, sink = make_writer(bench.database, cfg.telemetry, workdir / "spool")
    factory = EventFactory(cfg.seed, time_ordered=cfg.time_ordered_ids)
    result = IngestResult()
    producers = Producers(
        writer,
        factory,
        result.enqueue,
        count=cfg.producers,
        rate=cfg.rate,
        high_water=cfg.high_water,
    )
    await writer.start()
    stop = asyncio.Event()
    db_cpu0 = postgres_backend_cpu_s(bench.name) if bench.kind == "postgresql" else None
    machine0 = machine_busy_seconds()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    sampler = asyncio.create_task(sample_every_second(writer, result.samples, t0, stop))
    profiler = cProfile.Profile() if cfg.profile else None
    if profiler:
        profiler.enable()
    await producers.run(cfg.duration)
    t1 = time.perf_counter()
    await writer.flush()
    if not await wait_for_spool(writer):
        console.print(
            f"[yellow]{bench.kind}: {writer.spooled_total - writer.replayed_total:,} spilled "
            "rows still not replayed 2 minutes after flush(); counted as missing[/yellow]"
        )
    t2 = time.perf_counter()
    result.spool_left_bytes = writer.health().spool_bytes
    if profiler:
        profiler.disable()
    result.cpu_s = time.process_time() - cpu0
    machine1 = machine_busy_seconds()
    if machine0 is not None and machine1 is not None:
        result.machine_cpu_s = machine1 - machine0
    if db_cpu0 is not None:
        db_cpu1 = postgres_backend_cpu_s(bench.name)
        result.db_cpu_s = None if db_cpu1 is None else db_cpu1 - db_cpu0
    stop.set()
    await sampler
    await writer.stop()
    result.recorded = producers.recorded
    result.produce_s = t1 - t0
    result.flush_s = t2 - t1
    result.committed, result.distinct = await count_rows(bench.database)
    result.spooled = writer.spooled_total
    result.replayed = writer.replayed_total
    result.rejected = writer.rejected_total
    result.reported_new = sink.reported_new
    result.batch_sizes = list(sink.batch_sizes)
    result.insert_s = list(sink.insert_s)
    result.commit_lag_s = list(sink.commit_lag_s)
    if profiler and cfg.profile:
        path = cfg.profile.with_name(f"{cfg.profile.stem}-{bench.kind}{cfg.profile.suffix}")
        profiler.dump_stats(path)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        console.print(escape(out.getvalue()), style="dim", highlight=False)
        console.print(f"profile of the {bench.kind} ingest written to {path}")
    return result


# --------------------------------------------------------------------------- naive baseline


@dataclass(slots=True)
class NaiveResult:
    inserted: int = 0
    counted: int = 0
    elapsed_s: float = 0.0
    latency: Histogram = field(default_factory=Histogram)

    @property
    def rows_s(self) -> float:
        return self.counted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        lat = self.latency.summary_us()
        return {
            "inserted": self.inserted,
            "counted": self.counted,
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_s": round(self.rows_s, 1),
            "insert_p50_ms": _round((lat["p50_us"] or 0) / 1000, 3) if lat["calls"] else None,
            "insert_p99_ms": _round((lat["p99_us"] or 0) / 1000, 3) if lat["calls"] else None,
            "insert_mean_ms": _round((lat["mean_us"] or 0) / 1000, 3) if lat["calls"] else None,
        }


async def run_naive(bench: BenchDatabase, cfg: RunConfig) -> NaiveResult:
    """One INSERT per event, each in its own transaction, from concurrent "requests"."""
    await empty_table(bench.database)
    engine = bench.database.engine
    factory = EventFactory(cfg.seed + 2, time_ordered=cfg.time_ordered_ids)
    result = NaiveResult()
    statement = TABLE.insert()
    clock = time.perf_counter_ns

    async def request(deadline: float) -> None:
        while time.perf_counter() < deadline:
            event = factory.make()
            t0 = clock()
            async with engine.begin() as conn:
                await conn.execute(statement, event.row())
            result.latency.add(clock() - t0)
            result.inserted += 1

    # A short warm-up of the same path (pool, statement cache), then the measured period.
    warm = time.perf_counter() + min(1.0, cfg.baseline_duration / 5)
    await asyncio.gather(*(request(warm) for _ in range(cfg.baseline_concurrency)))
    await empty_table(bench.database)
    result.inserted = 0
    result.latency = Histogram()
    t0 = time.perf_counter()
    deadline = t0 + cfg.baseline_duration
    await asyncio.gather(*(request(deadline) for _ in range(cfg.baseline_concurrency)))
    result.elapsed_s = time.perf_counter() - t0
    result.counted, _ = await count_rows(bench.database)
    return result


# --------------------------------------------------------------------------- reporting


@dataclass(slots=True)
class DatabaseRun:
    kind: str
    settings: dict[str, str] = field(default_factory=dict)
    ingest: IngestResult | None = None
    naive: NaiveResult | None = None
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.ingest is None or self.naive is None or self.naive.rows_s <= 0:
            return None
        return self.ingest.rows_s / self.naive.rows_s


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "[dim]-[/dim]"
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def _fmt(value: float | None, spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def print_run(run: DatabaseRun, cfg: RunConfig, overhead_ns: float) -> None:
    if run.error:
        console.print(f"[red]{run.kind} failed:[/red] {escape(run.error)}")
    ingest = run.ingest
    if ingest is None:
        return
    s = ingest.summary()
    enq = s["enqueue"]
    mem = s["memory"]
    batches = s["batches"]
    tcfg = cfg.telemetry
    mode = "as fast as it takes" if cfg.rate <= 0 else f"offered {cfg.rate:,.0f} rows/s"
    if cfg.time_ordered_ids:
        mode += ", time-ordered request ids"
    table = Table(
        title=f"TelemetryWriter into {run.kind}: {cfg.duration:g} s, {cfg.producers} producers, "
        f"{mode}",
        caption=f"batch_size {tcfg.batch_size}, flush_interval_ms {tcfg.flush_interval_ms}, "
        f"queue_size {tcfg.queue_size}; timer overhead ~{overhead_ns:.0f} ns per call, "
        "included; writer lag: the age of the oldest event waiting in memory",
    )
    for header, justify in (("figure", "left"), ("measured", "right"), ("target", "right")):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    table.add_column("", justify="left")
    is_pg = run.kind == "postgresql"
    if cfg.rate <= 0:
        table.add_row(
            "sustained ingest, rows/s committed",
            _fmt(ingest.rows_s, ",.0f"),
            f">= {TARGET_ROWS_S:,}" if is_pg else "-",
            _verdict(ingest.rows_s >= TARGET_ROWS_S if is_pg else None),
        )
    else:  # paced: the writer sustains the offered rate if nothing piled up
        kept_up = ingest.kept_up(tcfg)
        table.add_row(
            "offered rows/s; committed rows/s (incl. flush)",
            f"{s['offered_rows_s']:,.0f}; {ingest.rows_s:,.0f}",
            f">= {TARGET_ROWS_S:,}" if is_pg else "-",
            _verdict(s["offered_rows_s"] >= 0.99 * TARGET_ROWS_S and kept_up if is_pg else None),
        )
        table.add_row(
            "kept up: backlog flushed within 1 s, nothing spilled",
            "yes" if kept_up else "no",
            "yes",
            _verdict(kept_up),
        )
    table.add_row(
        "rows recorded / counted / distinct ids",
        f"{ingest.recorded:,} / {ingest.committed:,} / {ingest.distinct:,}",
        "all equal",
        _verdict(ingest.lossless),
    )
    table.add_row(
        "insert() reported new rows",
        f"{ingest.reported_new:,}",
        "= counted",
        _verdict(ingest.reported_new == ingest.committed),
    )
    table.add_row(
        "produce time + flush time, s",
        f"{ingest.produce_s:.2f} + {ingest.flush_s:.2f}",
        "",
        "",
    )
    table.add_row(
        "record() p50 / p99 / mean, us",
        f"{_fmt(enq['p50_us'], '.2f')} / {_fmt(enq['p99_us'], '.2f')} / "
        f"{_fmt(enq['mean_us'], '.2f')}",
        f"< {TARGET_ENQUEUE_US:g}",
        _verdict(enq["p99_us"] is not None and enq["p99_us"] < TARGET_ENQUEUE_US),
    )
    table.add_row(
        "record() p99.9 / max, us; calls",
        f"{_fmt(enq['p999_us'], '.2f')} / {_fmt(enq['max_us'], ',.0f')}; {enq['calls']:,}",
        "",
        "",
    )
    table.add_row(
        "writer lag (health().lag_s, every 1 s) p50 / max, s",
        f"{_fmt(s['writer_lag_s']['p50'], '.3f')} / {_fmt(s['writer_lag_s']['max'], '.3f')}",
        "",
        "",
    )
    table.add_row(
        "commit lag (created -> committed) p50 / p99 / max, ms",
        f"{_fmt(s['commit_lag_ms']['p50'])} / {_fmt(s['commit_lag_ms']['p99'])} / "
        f"{_fmt(s['commit_lag_ms']['max'])}",
        "",
        "",
    )
    table.add_row(
        "batch size mean / p50 / max; batches",
        f"{_fmt(batches['mean'])} / {_fmt(batches['p50'], '.0f')} / {batches['max']}; "
        f"{batches['count']:,}",
        "",
        "",
    )
    table.add_row(
        "insert() per batch p50 / p99, ms; per row, us",
        f"{_fmt(batches['insert_p50_ms'])} / {_fmt(batches['insert_p99_ms'])}; "
        f"{_fmt(batches['insert_us_per_row'], '.2f')}",
        "",
        "",
    )
    table.add_row(
        "spilled to spool / replayed / rejected; spool left",
        f"{ingest.spooled:,} / {ingest.replayed:,} / {ingest.rejected:,}; "
        f"{ingest.spool_left_bytes / 2**20:,.1f} MiB",
        "",
        "",
    )
    table.add_row(
        "RSS start / max / end, MiB",
        f"{_fmt(mem['start_mib'])} / {_fmt(mem['max_mib'])} / {_fmt(mem['end_mib'])}",
        "",
        "",
    )
    slope = mem["slope_mib_min"]
    table.add_row(
        "RSS slope over the 2nd half, MiB/min",
        _fmt(slope, "+.3f"),
        f"|x| < {FLAT_MIB_PER_MIN:g} (flat)",
        _verdict(None if slope is None else abs(slope) < FLAT_MIB_PER_MIN),
    )
    cpu = f"{s['process_cpu_pct']:.0f} % ({_fmt(s['process_cpu_us_per_row'], '.1f')} us/row)"
    if s["db_backend_cpu_pct"] is not None:
        cpu += f"; database backends {s['db_backend_cpu_pct']:.0f} %"
    table.add_row("CPU of this process (of one core)", cpu, "", "")
    if s["machine_cpu_busy_pct"] is not None:
        table.add_row(
            f"machine: all {os.cpu_count()} cores busy; other processes (of one core)",
            f"{s['machine_cpu_busy_pct']:.0f} %; {s['other_processes_cpu_pct']:.0f} %",
            "",
            "[dim]a busy machine lowers the figures[/dim]"
            if s["other_processes_cpu_pct"] > 25
            else "",
        )
    naive = run.naive
    if naive is not None:
        n = naive.summary()
        table.add_row(
            f"naive peer: 1 INSERT per event, {cfg.baseline_concurrency} concurrent, rows/s",
            f"{naive.rows_s:,.0f}",
            "",
            f"[dim]{naive.counted:,} rows in {naive.elapsed_s:.1f} s[/dim]",
        )
        table.add_row(
            "naive peer: insert awaited by the request p50 / p99, ms",
            f"{_fmt(n['insert_p50_ms'], '.2f')} / {_fmt(n['insert_p99_ms'], '.2f')}",
            "",
            "",
        )
        table.add_row(
            "writer / naive peer, rows/s",
            _fmt(run.ratio, ".1f") + "x",
            "",
            "",
        )
    console.print(table)


def to_json(
    runs: list[DatabaseRun], cfg: RunConfig, meta: dict[str, Any], loop: str, overhead_ns: float
) -> dict[str, Any]:
    return {
        "meta": meta | {"event_loop": loop, "timer_overhead_ns": overhead_ns},
        "config": {
            "duration_s": cfg.duration,
            "rate": cfg.rate,
            "producers": cfg.producers,
            "high_water": cfg.high_water,
            "warmup_s": cfg.warmup,
            "request_ids": "time-ordered" if cfg.time_ordered_ids else "random",
            "telemetry": cfg.telemetry.model_dump(mode="json"),
            "baseline_duration_s": cfg.baseline_duration,
            "baseline_concurrency": cfg.baseline_concurrency,
        },
        "targets": {
            "rows_s": TARGET_ROWS_S,
            "enqueue_us": TARGET_ENQUEUE_US,
            "flat_mib_per_min": FLAT_MIB_PER_MIN,
        },
        "runs": [
            {
                "database": run.kind,
                "server_settings": run.settings,
                "error": run.error,
                "ingest": run.ingest.summary() if run.ingest else None,
                "naive": run.naive.summary() if run.naive else None,
                "kept_up": run.ingest.kept_up(cfg.telemetry) if run.ingest else None,
                "writer_over_naive": _round(run.ratio, 2),
            }
            for run in runs
        ],
    }


# --------------------------------------------------------------------------- main


async def run_all(kinds: list[str], dsn: str, cfg: RunConfig, keep: bool) -> list[DatabaseRun]:
    runs = []
    for kind in kinds:
        run = DatabaseRun(kind)
        runs.append(run)
        workdir = Path(tempfile.mkdtemp(prefix="helixflow-ingest-spool-"))
        try:
            async with fresh_database(kind, dsn, keep) as bench:
                console.print(
                    f"[bold]{kind}[/bold]: {escape(parse_url(bench.url).render_as_string())}; "
                    f"warm-up {cfg.warmup:g} s, ingest {cfg.duration:g} s, naive peer "
                    f"{cfg.baseline_duration:g} s",
                )
                run.settings = bench.settings
                if bench.settings:
                    console.print(
                        ", ".join(f"{k} {v}" for k, v in bench.settings.items()), style="dim"
                    )
                run.ingest = await run_ingest(bench, cfg, workdir)
                if cfg.baseline_duration > 0:
                    run.naive = await run_naive(bench, cfg)
        except Exception as exc:  # report it and go on with the next database
            run.error = f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return runs


def _database_list(value: str) -> list[str]:
    kinds = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [k for k in kinds if k not in DATABASES]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown database {', '.join(unknown) or value!r}; choose from {', '.join(DATABASES)}"
        )
    return kinds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TelemetryConfig()
    parser = argparse.ArgumentParser(
        prog="telemetry_ingest.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--database",
        type=_database_list,
        default=["postgresql"],
        help="databases to measure, comma separated: postgresql (a fresh database on --dsn's "
        "server, dropped afterwards), sqlite (a temporary file) (default: postgresql)",
    )
    add(
        "--dsn",
        default=os.environ.get("HELIXFLOW_TEST_POSTGRES_DSN", DEFAULT_DSN),
        help="PostgreSQL server to create the benchmark database in (default: "
        "$HELIXFLOW_TEST_POSTGRES_DSN, else %(default)s)",
    )
    add(
        "--duration",
        type=float,
        default=30.0,
        help="seconds of ingest; 600 for the issue's memory-flatness run (default: 30)",
    )
    add(
        "--rate",
        type=float,
        default=0.0,
        help="rows/s offered open-loop by all producers together; 0: as fast as the writer "
        "takes them (default: 0)",
    )
    add(
        "--producers",
        type=int,
        default=8,
        help="concurrent producer coroutines, like request handlers (default: 8)",
    )
    add(
        "--high-water",
        type=int,
        default=None,
        help="with --rate 0, producers pause while more rows than this wait in memory "
        "(default: 4 x batch size, at most half the queue)",
    )
    add(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="TelemetryConfig.batch_size (default: %(default)s, the setting's default)",
    )
    add(
        "--flush-interval-ms",
        type=int,
        default=defaults.flush_interval_ms,
        help="TelemetryConfig.flush_interval_ms (default: %(default)s)",
    )
    add(
        "--queue-size",
        type=int,
        default=defaults.queue_size,
        help="TelemetryConfig.queue_size (default: %(default)s)",
    )
    add(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of unmeasured ingest first, its rows removed (default: 2)",
    )
    add(
        "--baseline-duration",
        type=float,
        default=10.0,
        help="seconds of the naive one-INSERT-per-event peer; 0 skips it (default: 10)",
    )
    add(
        "--baseline-concurrency",
        type=int,
        default=DatabaseConfig().pool_size,
        help="concurrent naive inserts, one per simulated request (default: %(default)s, "
        "the connection pool's size)",
    )
    add(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop where installed (as uvicorn picks), or asyncio's (default: auto)",
    )
    add("--seed", type=int, default=1234, help="seed of the generated rows (default: 1234)")
    add(
        "--request-ids",
        choices=("random", "time-ordered"),
        default="time-ordered",
        help="time-ordered ids as the server makes them (nanosecond timestamp + random), "
        "which keep the unique index on request_id appending at its end, or random 32-hex "
        "ids (default: time-ordered)",
    )
    add(
        "--profile",
        type=Path,
        default=None,
        help="cProfile the measured ingest, print its top functions and write the stats to "
        "PATH with the database's name before the suffix (e.g. /tmp/ingest-postgresql.prof)",
    )
    add(
        "--keep-database",
        action="store_true",
        help="do not drop the PostgreSQL database / delete the SQLite file afterwards",
    )
    add(
        "--json-out",
        type=Path,
        default=None,
        help="write machine-readable results here (e.g. benchmarks/results/telemetry_ingest.json)",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if args.producers < 1:
        parser.error("--producers must be positive")
    if args.rate < 0:
        parser.error("--rate must not be negative")
    if args.baseline_concurrency < 1:
        parser.error("--baseline-concurrency must be positive")
    return args


def new_loop(choice: str) -> tuple[asyncio.AbstractEventLoop, str]:
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        telemetry = TelemetryConfig(
            batch_size=args.batch_size,
            flush_interval_ms=args.flush_interval_ms,
            queue_size=args.queue_size,
        )
    except ValueError as exc:
        console.print(f"[red]invalid writer settings:[/red] {escape(str(exc))}")
        return 2
    high_water = args.high_water or min(4 * telemetry.batch_size, telemetry.queue_size // 2)
    cfg = RunConfig(
        duration=args.duration,
        rate=args.rate,
        producers=args.producers,
        high_water=max(high_water, 1),
        warmup=args.warmup,
        telemetry=telemetry,
        baseline_duration=args.baseline_duration,
        baseline_concurrency=args.baseline_concurrency,
        seed=args.seed,
        profile=args.profile,
        time_ordered_ids=args.request_ids == "time-ordered",
    )
    meta = run_metadata(REPO_ROOT, ("helixflow", "sqlalchemy", "asyncpg", "aiosqlite", "uvloop"))
    overhead = timer_overhead_ns()
    loop, loop_name = new_loop(args.loop)
    console.print(
        f"{meta['cpus']} CPUs, Python {meta['python']}, {loop_name}; "
        f"SQLAlchemy {meta['versions'].get('sqlalchemy', '?')}, "
        f"asyncpg {meta['versions'].get('asyncpg', '-')}",
        style="dim",
    )
    try:
        runs = loop.run_until_complete(run_all(args.database, args.dsn, cfg, args.keep_database))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130
    finally:
        loop.close()
    console.rule("[bold]results")
    for run in runs:
        print_run(run, cfg, overhead)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_bytes(
            orjson.dumps(to_json(runs, cfg, meta, loop_name, overhead), option=orjson.OPT_INDENT_2)
            + b"\n"
        )
        console.print(f"wrote {args.json_out}")
    return 1 if any(run.error for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
