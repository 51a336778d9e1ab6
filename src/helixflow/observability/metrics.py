"""Prometheus metrics: one :class:`Metrics` per app, its own ``CollectorRegistry``.

Two kinds of figures:

- **Request figures** (requests, latency and TTFT histograms, tokens, rate-limit refusals,
  router decisions) are prometheus_client counters and histograms updated once per request:
  :meth:`Metrics.observe_http` by the HTTP middleware (``api/metrics.py``),
  :meth:`Metrics.observe_request` with each inference request's final telemetry event,
  :meth:`Metrics.observe_decision` with each routing decision. Children are looked up once per
  label set and kept, so an update costs a dict lookup and an increment (a few microseconds).
  Label values are bounded: a requested model outside the catalogue is ``unknown``, a method
  outside the usual ones ``other``.
- **State figures** (engine load, KV cache, circuits, response cache, KV store, telemetry writer,
  DB pool, process) are read from the services on ``app.state`` when Prometheus scrapes, by a
  custom collector (``metrics_state.py``): nothing on the request path keeps them up to date.

Several worker processes (prometheus_client's multiprocess mode): every worker's counters and
histograms are written to per-process files in one directory and summed by the worker that
answers the scrape (``MultiProcessCollector``). State figures cannot be read from another
process, so each worker *publishes* them into multiprocess gauges every
``metrics_publish_interval_s`` (and right before answering a scrape): loads and sizes are summed
over live workers (``livesum``), circuit states and telemetry lag take the worst worker
(``livemax``), counters grow by what the worker counted since it last published. Process figures
are published the same way (memory and CPU summed over workers).

Running it::

    export PROMETHEUS_MULTIPROC_DIR=/run/helixflow-metrics   # the same for every worker
    rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"   # at start
    uvicorn --workers 4 --factory <a zero-argument factory calling create_app> ...
    # or gunicorn -k uvicorn.workers.UvicornWorker -w 4 -c gunicorn.conf.py ..., with
    #   def on_starting(server): prepare_multiproc_dir(Path(os.environ[MULTIPROC_ENV_VAR]))
    #   def child_exit(server, worker): worker_exited(worker.pid)

The variable must be set before the process starts: prometheus_client picks its storage when it
is imported. ``observability.metrics_multiproc_dir`` defaults to it and must agree with it. A
worker that stops cleanly (:meth:`Metrics.close`) withdraws its gauges; a worker that crashes
under uvicorn keeps them until the directory is emptied (gunicorn's ``child_exit`` hook does it
at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    values,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from helixflow.errors import ConfigurationError
from helixflow.observability.metrics_state import (
    BuildInfoCollector,
    Catalogue,
    Named,
    RouterSource,
    StateCollector,
    StatePublisher,
    source,
)
from helixflow.observability_config import (
    MULTIPROC_ENV_VAR,
    ObservabilityConfig,
    prometheus_multiproc_env,
)

if TYPE_CHECKING:
    from helixflow.store.telemetry.events import InferenceEvent, RoutingEvent

__all__ = [
    "DURATION_BUCKETS",
    "TTFT_BUCKETS",
    "Metrics",
    "prepare_multiproc_dir",
    "rejection_reason",
    "worker_exited",
]

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
UNKNOWN_MODEL = "unknown"
NONE = "none"

M = TypeVar("M", bound=MetricWrapperBase)


class _Children(Generic[M]):
    """A labelled metric's children by label values, each looked up in the metric once."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *labels: str) -> M:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


def rejection_reason(code: str | None, message: str | None) -> str:
    """The ``reason`` label of a 429: which limit refused (from the error's code and message)."""
    if code == "budget_exceeded":
        return "budget"
    if code == "queue_full":
        return "queue_full"
    if code == "rate_limit_exceeded" and message:
        for marker, reason in (
            ("on requests per min", "requests"),
            ("on tokens per min", "tokens"),
            ("on parallel requests", "parallel"),
        ):
            if marker in message:
                return reason
    return OTHER


class Metrics:
    """The metrics of one app. ``sources``: where the state figures live (``app.state``:
    ``engines``, ``router``, ``routing``, ``kv_store``, ``store``), read at scrape time."""

    def __init__(
        self, config: ObservabilityConfig, *, version: str, sources: object | None = None
    ) -> None:
        self.config = config
        self._sources = sources
        self.multiproc_dir = _multiproc_dir(config)
        self.registry = CollectorRegistry()
        self._publisher: StatePublisher | None = None
        self._task: asyncio.Task[None] | None = None
        # Multiprocess mode: the instruments write to per-process files, which the
        # MultiProcessCollector reads; registering them too would expose them twice.
        into = None if self.multiproc_dir is not None else self.registry

        def counter(name: str, doc: str, *labels: str) -> _Children[Counter]:
            return _Children(Counter(name, doc, labels, registry=into))

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> _Children[Histogram]:
            labels = ("endpoint", "model")
            return _Children(Histogram(name, doc, labels, buckets=buckets, registry=into))

        self._http = counter(
            "helixflow_http_requests_total",
            "HTTP requests by route template, method and status.",
            *("route", "method", "status"),
        )
        self._inference = counter(
            "helixflow_inference_requests_total",
            "Inference requests by endpoint, requested model, serving target and outcome.",
            *("endpoint", "model", "target", "provider", "status"),
        )
        self._duration = histogram(
            "helixflow_request_duration_seconds",
            "Inference request duration, to the last byte.",
            DURATION_BUCKETS,
        )
        self._ttft = histogram(
            "helixflow_time_to_first_token_seconds",
            "Time from the request to its first token.",
            TTFT_BUCKETS,
        )
        self._prompt = counter("helixflow_prompt_tokens_total", "Prompt tokens.", "model", "target")
        self._completion = counter(
            "helixflow_completion_tokens_total", "Completion tokens.", "model", "target"
        )
        self._cached = counter(
            "helixflow_cached_prompt_tokens_total",
            "Prompt tokens served from a cached prefix.",
            *("model", "target"),
        )
        self._rejections = counter(
            "helixflow_rate_limit_rejections_total",
            "Requests refused with 429, by the limit that refused them.",
            "reason",
        )
        self._decisions = counter(
            "helixflow_router_decisions_total",
            "Routing decisions: served by the first choice, by a fallback, or failed.",
            *("strategy", "outcome"),
        )
        self._fallbacks = counter(
            "helixflow_router_fallback_attempts_total",
            "Attempts on a target that failed or were skipped (open circuit).",
            "target",
        )
        self._catalogue: Catalogue | None = None
        self._model_names: frozenset[str] = frozenset()
        if self.multiproc_dir is None:
            self.registry.register(StateCollector(sources, version))
            ProcessCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        else:
            MultiProcessCollector(self.registry, path=str(self.multiproc_dir))  # type: ignore[no-untyped-call]
            self.registry.register(BuildInfoCollector(version))
            self._publisher = StatePublisher(sources)
        PlatformCollector(registry=self.registry)

    @property
    def multiprocess(self) -> bool:
        return self.multiproc_dir is not None

    # --- the request path (each call: microseconds) ---------------------------------------

    def observe_http(self, route: str | None, method: str, status: int) -> None:
        """One HTTP request; ``route``: its route template, None when no route matched."""
        method = method if method in HTTP_METHODS else OTHER
        self._http(route or OTHER, method, str(status)).inc()

    def observe_rejection(self, code: str | None, message: str | None) -> None:
        """A 429 with the error's code and message."""
        self._rejections(rejection_reason(code, message)).inc()

    def observe_request(self, event: InferenceEvent, target: Named | None) -> None:
        """An inference request's final event; ``target``: the target it was sent to last
        (None when none was tried: refused, invalid, or answered from the response cache)."""
        model = self.model_label(event.requested_model)
        target_id = target.id if target is not None else NONE
        provider = (event.provider or NONE) if target is not None else NONE
        self._inference(event.endpoint, model, target_id, provider, event.status).inc()
        self._duration(event.endpoint, model).observe(event.latency_ms / 1000)
        if event.ttft_ms is not None:
            self._ttft(event.endpoint, model).observe(event.ttft_ms / 1000)
        if event.prompt_tokens:
            self._prompt(model, target_id).inc(event.prompt_tokens)
        if event.completion_tokens:
            self._completion(model, target_id).inc(event.completion_tokens)
        if event.cached_tokens:
            self._cached(model, target_id).inc(event.cached_tokens)

    def observe_decision(self, event: RoutingEvent) -> None:
        """A routing decision: ``served`` by the plan's first target, by a ``fallback``, or
        ``failed``; each failed or skipped attempt counts for its target."""
        attempts = event.attempts or []
        if event.chosen_target is None:
            outcome = "failed"
        elif attempts and attempts[0].get("target") != event.chosen_target:
            outcome = "fallback"
        else:
            outcome = "served"
        self._decisions(event.strategy, outcome).inc()
        for attempt in attempts:
            target = attempt.get("target")
            if attempt.get("status") != "ok" and isinstance(target, str):
                self._fallbacks(target).inc()

    def model_label(self, requested: str | None) -> str:
        """``requested`` when the catalogue knows it (a model, alias, target id or group),
        else ``unknown``: a label value a client cannot multiply."""
        if requested is None:
            return UNKNOWN_MODEL
        router = cast("RouterSource | None", source(self._sources, "router"))
        catalogue = router.catalogue if router is not None else None
        if catalogue is not self._catalogue:
            self._catalogue, self._model_names = catalogue, _model_names(catalogue)
        return requested if requested in self._model_names else UNKNOWN_MODEL

    # --- scraping and multiprocess upkeep -------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when ``accept`` asks for it) and
        its Content-Type."""
        self.publish()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def publish(self) -> None:
        """Multiprocess mode: write this worker's state figures for the others (no-op else)."""
        if self._publisher is not None:
            self._publisher.publish()

    def start(self) -> None:
        """Multiprocess mode: publish every ``metrics_publish_interval_s``. Call it in the
        lifespan (it needs the running loop); no-op in one process."""
        if self._publisher is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._publish_every(self.config.metrics_publish_interval_s)
            )

    async def close(self) -> None:
        """Stop publishing and withdraw this worker's gauges (its counters stay counted)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.multiproc_dir is not None:
            worker_exited(os.getpid(), self.multiproc_dir)

    async def _publish_every(self, interval_s: float) -> None:
        while True:
            try:
                self.publish()
            except Exception:
                log.warning("metrics: publishing failed", exc_info=True)
            await asyncio.sleep(interval_s)


def _model_names(catalogue: Catalogue | None) -> frozenset[str]:
    if catalogue is None:
        return frozenset()
    names: set[str] = set(catalogue.groups)
    for target in catalogue.targets.values():
        names.update((target.id, target.model, *target.aliases))
    return frozenset(names)


def _multiproc_dir(config: ObservabilityConfig) -> Path | None:
    """The multiprocess directory, after checking that prometheus_client writes there."""
    wanted = config.metrics_multiproc_dir
    if wanted is None:
        return None
    env = prometheus_multiproc_env()
    if not getattr(values.ValueClass, "_multiprocess", False) or env is None:
        raise ConfigurationError(
            f"observability.metrics_multiproc_dir is {wanted}, but prometheus_client was not "
            f"started in multiprocess mode: set {MULTIPROC_ENV_VAR}={wanted} in the environment "
            "of every worker before it starts"
        )
    if env.resolve() != wanted.resolve():
        raise ConfigurationError(
            f"observability.metrics_multiproc_dir ({wanted}) and {MULTIPROC_ENV_VAR} ({env}) "
            "name different directories; prometheus_client writes to the latter"
        )
    wanted.mkdir(parents=True, exist_ok=True)
    return wanted


def prepare_multiproc_dir(path: Path) -> None:
    """Empty (or create) the multiprocess directory: once, before any worker starts."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def worker_exited(pid: int, path: Path | None = None) -> None:
    """Withdraw a stopped worker's gauges (gunicorn's ``child_exit`` hook)."""
    directory = path or prometheus_multiproc_env()
    if directory is not None:
        mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
