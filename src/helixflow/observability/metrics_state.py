"""The state figures of ``/metrics``: read from the services on ``app.state`` when Prometheus
scrapes (engine load, KV cache, circuits, response cache, session KV store, telemetry writer, DB
pool), so nothing on the request path keeps them up to date.

One process: :class:`StateCollector` reads them in the scrape. Several worker processes
(prometheus_client's multiprocess mode): :class:`StatePublisher` writes each worker's figures
into multiprocess gauges and counters, each with the way it combines over workers
(:attr:`StateFamily.mode`), for whichever worker answers the scrape (see ``metrics.py``).

The services are read through the protocols below (structurally: this module imports none of
them at run time); ``_services_fit`` has mypy check that the real ones fit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol, cast

from prometheus_client import Counter, Gauge, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from helixflow.engine.base import EngineStats
    from helixflow.engine.kvstore import KVStoreStats
    from helixflow.router.cache import CacheStats
    from helixflow.store.database import PoolStats
    from helixflow.store.telemetry.writer import WriterHealth

log = logging.getLogger(__name__)

CIRCUIT_VALUES: Mapping[str, float] = MappingProxyType({"closed": 0, "half_open": 1, "open": 2})
GaugeMode = Literal["livesum", "livemax", "livemin"]


# --- what is read (app.state's services, structurally) ----------------------------------------


class Named(Protocol):
    @property
    def id(self) -> str: ...


class ServedEngine(Protocol):
    @property
    def config(self) -> Named: ...
    @property
    def ready(self) -> bool: ...
    def stats(self) -> EngineStats: ...


class _Breaker(Protocol):
    @property
    def state(self) -> str: ...


class _TargetHealth(Protocol):
    @property
    def target(self) -> Named: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def breaker(self) -> _Breaker: ...


class _Target(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def aliases(self) -> tuple[str, ...]: ...


class Catalogue(Protocol):
    @property
    def targets(self) -> Mapping[str, _Target]: ...
    @property
    def groups(self) -> Mapping[str, object]: ...


class RouterSource(Protocol):
    @property
    def health(self) -> Iterable[_TargetHealth]: ...
    @property
    def catalogue(self) -> Catalogue: ...


class _CacheSource(Protocol):
    def stats(self) -> CacheStats: ...


class RoutingSource(Protocol):
    @property
    def cache(self) -> _CacheSource | None: ...


class KVStoreSource(Protocol):
    def stats(self) -> KVStoreStats: ...


class _PoolSource(Protocol):
    def pool_stats(self) -> PoolStats: ...


class StoreSource(Protocol):
    @property
    def database(self) -> _PoolSource: ...
    def telemetry_health(self) -> WriterHealth | None: ...


if TYPE_CHECKING:  # mypy checks that the real services fit the protocols above
    from helixflow.engine.kvstore import SessionKVStore
    from helixflow.engine.registry import EngineRegistry
    from helixflow.router.runtime import RouterRuntime
    from helixflow.store.runtime import Store

    def _services_fit(
        engines: EngineRegistry, routing: RouterRuntime, kv: SessionKVStore, store: Store
    ) -> tuple[Iterable[ServedEngine], RouterSource, RoutingSource, KVStoreSource, StoreSource]:
        return engines, routing.router, routing, kv, store


def source(sources: object, name: str) -> object | None:
    """``sources.<name>`` (an ``app.state`` attribute), None before the lifespan sets it."""
    return getattr(sources, name, None)


# --- state figures ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateFamily:
    """A figure read from the services at scrape time."""

    name: str
    kind: Literal["gauge", "counter"]
    documentation: str
    labels: tuple[str, ...] = ()
    mode: GaugeMode = "livesum"
    """How a gauge combines over workers in multiprocess mode."""


def _gauge(name: str, doc: str, *labels: str, mode: GaugeMode = "livesum") -> StateFamily:
    return StateFamily(name, "gauge", doc, labels, mode)


def _counter(name: str, doc: str, *labels: str) -> StateFamily:
    return StateFamily(name, "counter", doc, labels)


STATE_FAMILIES: tuple[StateFamily, ...] = (
    _gauge(
        "helixflow_router_circuit_state",
        "Circuit: 0 closed, 1 half-open, 2 open.",
        "target",
        mode="livemax",
    ),
    _gauge("helixflow_router_target_in_flight", "Requests in flight to the target.", "target"),
    _gauge("helixflow_engine_active_sequences", "Sequences being generated.", "model"),
    _gauge("helixflow_engine_queue_depth", "Requests waiting for a slot.", "model"),
    _counter(
        "helixflow_engine_batch_tokens_total", "Tokens decoded (prompt and generated).", "model"
    ),
    _counter("helixflow_engine_steps_total", "Decode steps.", "model"),
    _gauge("helixflow_kv_cache_cells_used", "KV cache cells in use.", "model"),
    _gauge("helixflow_kv_cache_cells", "KV cache cells in all.", "model"),
    _counter(
        "helixflow_kv_prefix_reused_tokens_total",
        "Prompt tokens reused from the KV cache.",
        "model",
    ),
    _counter("helixflow_response_cache_hits_total", "Requests answered from the response cache."),
    _counter("helixflow_response_cache_misses_total", "Response cache lookups that missed."),
    _gauge("helixflow_response_cache_bytes", "Bytes held by the response cache (memory)."),
    _counter("helixflow_kv_store_hits_total", "Session KV states restored, per tier.", "tier"),
    _counter("helixflow_kv_store_misses_total", "Session KV states not found."),
    _gauge("helixflow_kv_store_bytes", "Bytes held by the session KV store, per tier.", "tier"),
    _gauge("helixflow_telemetry_queue_events", "Request records waiting to be written."),
    _gauge("helixflow_telemetry_lag_seconds", "Age of the oldest record waiting.", mode="livemax"),
    _gauge(
        "helixflow_telemetry_spool_bytes",
        "Bytes spooled to disk while the database is away.",
        mode="livemax",
    ),
    _counter("helixflow_telemetry_events_written_total", "Records written to the database."),
    _gauge("helixflow_db_pool_size", "Connections in the database pool."),
    _gauge("helixflow_db_pool_checked_out", "Pool connections in use."),
    _gauge("helixflow_db_pool_overflow", "Connections open beyond the pool size."),
)
STATE_INDEX: Mapping[str, int] = MappingProxyType({f.name: i for i, f in enumerate(STATE_FAMILIES)})

PROCESS_FAMILIES: tuple[StateFamily, ...] = (
    _gauge("process_virtual_memory_bytes", "Virtual memory size in bytes."),
    _gauge("process_resident_memory_bytes", "Resident memory size in bytes."),
    _gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        mode="livemin",
    ),
    _counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds."),
    _gauge("process_open_fds", "Number of open file descriptors."),
    _gauge("process_max_fds", "Maximum number of open file descriptors.", mode="livemin"),
)
"""prometheus_client's ProcessCollector figures, as published per worker in multiprocess mode."""
PROCESS_INDEX: Mapping[str, StateFamily] = MappingProxyType({f.name: f for f in PROCESS_FAMILIES})


class Reading(NamedTuple):
    name: str
    labels: tuple[str, ...]
    value: float


def read_state(sources: object) -> Iterator[Reading]:
    """Every state figure ``sources`` (``app.state``) holds now; a failing service is skipped."""
    for reader in (_engines, _router, _response_cache, _kv_store, _store):
        try:
            yield from list(reader(sources))
        except Exception:
            log.warning("metrics: %s failed", reader.__name__, exc_info=True)


def _engines(sources: object) -> Iterator[Reading]:
    engines = source(sources, "engines")
    if engines is None:
        return
    for engine in cast("Iterable[ServedEngine]", engines):
        if not engine.ready:
            continue
        s, model = engine.stats(), (engine.config.id,)
        yield Reading("helixflow_engine_active_sequences", model, s.active_sequences)
        yield Reading("helixflow_engine_queue_depth", model, s.queued_requests)
        yield Reading(
            "helixflow_engine_batch_tokens_total",
            model,
            s.tokens_generated + s.prompt_tokens_processed,
        )
        yield Reading("helixflow_engine_steps_total", model, s.steps)
        yield Reading("helixflow_kv_cache_cells_used", model, s.kv_cells_used)
        yield Reading("helixflow_kv_cache_cells", model, s.kv_cells_total)
        yield Reading("helixflow_kv_prefix_reused_tokens_total", model, s.prompt_tokens_reused)


def _router(sources: object) -> Iterator[Reading]:
    router = cast("RouterSource | None", source(sources, "router"))
    if router is None:
        return
    for h in router.health:
        target = (h.target.id,)
        circuit = CIRCUIT_VALUES.get(h.breaker.state, 2)
        yield Reading("helixflow_router_circuit_state", target, circuit)
        yield Reading("helixflow_router_target_in_flight", target, h.in_flight)


def _response_cache(sources: object) -> Iterator[Reading]:
    routing = cast("RoutingSource | None", source(sources, "routing"))
    if routing is None or routing.cache is None:
        return
    s = routing.cache.stats()
    yield Reading("helixflow_response_cache_hits_total", (), s.hits)
    yield Reading("helixflow_response_cache_misses_total", (), s.misses)
    if s.bytes is not None:
        yield Reading("helixflow_response_cache_bytes", (), s.bytes)


def _kv_store(sources: object) -> Iterator[Reading]:
    kv = cast("KVStoreSource | None", source(sources, "kv_store"))
    if kv is None:
        return
    s = kv.stats()
    for tier, hits in s.hits.items():
        yield Reading("helixflow_kv_store_hits_total", (tier,), hits)
    yield Reading("helixflow_kv_store_misses_total", (), s.misses)
    for tier, size in s.bytes.items():
        yield Reading("helixflow_kv_store_bytes", (tier,), size)


def _store(sources: object) -> Iterator[Reading]:
    store = cast("StoreSource | None", source(sources, "store"))
    if store is None:
        return
    health = store.telemetry_health()
    if health is not None:
        yield Reading("helixflow_telemetry_queue_events", (), health.queued)
        yield Reading("helixflow_telemetry_lag_seconds", (), health.lag_s)
        yield Reading("helixflow_telemetry_spool_bytes", (), health.spool_bytes)
        yield Reading("helixflow_telemetry_events_written_total", (), health.written_total)
    pool = store.database.pool_stats()
    yield Reading("helixflow_db_pool_size", (), pool.size)
    yield Reading("helixflow_db_pool_checked_out", (), pool.checked_out)
    yield Reading("helixflow_db_pool_overflow", (), pool.overflow)


def _build_info(version: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "helixflow_build_info", "HelixFlow build; the value is always 1.", labels=["version"]
    )
    family.add_metric([version], 1)
    return family


class StateCollector:
    """Reads the state figures at scrape time (one process)."""

    def __init__(self, sources: object, version: str) -> None:
        self._sources = sources
        self._version = version

    def describe(self) -> Iterable[Metric]:
        return [_build_info(self._version), *self._families()]

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        for reading in read_state(self._sources):
            families[STATE_INDEX[reading.name]].add_metric(list(reading.labels), reading.value)
        return [_build_info(self._version), *families]

    def _families(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        return [
            GaugeMetricFamily(f.name, f.documentation, labels=f.labels)
            if f.kind == "gauge"
            else CounterMetricFamily(f.name, f.documentation, labels=f.labels)
            for f in STATE_FAMILIES
        ]


class BuildInfoCollector:
    def __init__(self, version: str) -> None:
        self._version = version

    def collect(self) -> Iterable[Metric]:
        return [_build_info(self._version)]


def process_readings(collector: ProcessCollector) -> Iterator[Reading]:
    for family in collector.collect():
        for sample in family.samples:
            if sample.name in PROCESS_INDEX:
                yield Reading(sample.name, (), sample.value)


class StatePublisher:
    """Multiprocess mode: writes this worker's state figures into multiprocess gauges and
    counters (prometheus_client's per-process files), for whichever worker is scraped."""

    def __init__(self, sources: object) -> None:
        self._sources = sources
        self._process = ProcessCollector(registry=None)
        self._instruments: dict[str, Gauge | Counter] = {}
        for family in (*STATE_FAMILIES, *PROCESS_FAMILIES):
            self._instruments[family.name] = (
                Gauge(
                    family.name,
                    family.documentation,
                    family.labels,
                    registry=None,
                    multiprocess_mode=family.mode,
                )
                if family.kind == "gauge"
                else Counter(family.name, family.documentation, family.labels, registry=None)
            )
        self._published: dict[tuple[str, tuple[str, ...]], float] = {}

    def publish(self) -> None:
        readings = [*read_state(self._sources), *process_readings(self._process)]
        for name, labels, value in readings:
            instrument = self._instruments[name]
            child = instrument.labels(*labels) if labels else instrument
            if isinstance(child, Gauge):
                child.set(value)
                continue
            key = (name, labels)
            last = self._published.get(key, 0.0)
            grown = value - last if value >= last else value  # a reset source starts over
            if grown > 0:
                child.inc(grown)
            self._published[key] = value
