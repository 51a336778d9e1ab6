"""GET /metrics: the HTTP middleware and endpoint on a small app, then a real server (a local
model and fake upstream providers) scraped before and after real traffic, and a server in
prometheus_client's multiprocess mode.

The real-server tests need the app's wiring: ``create_app`` building a ``Metrics`` on
``app.state.metrics``, the middleware and the router installed, ``TelemetryMiddleware`` calling
``observe_request`` and the gateway ``observe_decision``."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Receive, Scope, Send

from helixflow import __version__
from helixflow.api.errors import install_error_handlers
from helixflow.api.metrics import HTTPMetricsMiddleware, metrics_router
from helixflow.errors import AuthenticationError, QueueFullError
from helixflow.observability.metrics import Metrics, prepare_multiproc_dir
from helixflow.observability_config import MULTIPROC_ENV_VAR, ObservabilityConfig
from tests.conftest import ServerProcess, wait_idle
from tests.fake_upstream import FakeUpstream, status

CHAT = "/v1/chat/completions"
LOCAL_MODEL = "smollm2-135m"
ONE_SLOT = "one-slot"
LIMITED = "limited-model"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""(sample name, labels) -> value."""


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def count(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- the middleware and the endpoint on a small app ------------------------------------------


class RefuseGuarded:
    """Answers 401 for /v9/guarded/... before any routing, like the auth middleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v9/guarded/"):
            response = Response(status_code=401)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def small_app(path: str = "/metrics", *, with_metrics: bool = True) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    included = APIRouter(prefix="/v9")

    @included.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @included.get("/guarded/{key_id}")
    async def guarded(key_id: str) -> dict[str, str]:
        return {"id": key_id}

    app.include_router(included)

    @app.get("/full")
    async def full() -> None:
        raise QueueFullError("small", 3, retry_after=1)

    @app.get("/denied")
    async def denied() -> None:
        raise AuthenticationError("no")

    app.include_router(metrics_router(path))
    if with_metrics:
        metrics = Metrics(ObservabilityConfig(metrics_multiproc_dir=None), version="0.0.1")
        app.state.metrics = metrics
        app.add_middleware(RefuseGuarded)
        app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)
    return app


@pytest.fixture
async def small() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=small_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def scrape_small(client: httpx.AsyncClient, path: str = "/metrics") -> Samples:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    return parse(response.text)


async def test_requests_are_counted_by_route_template(small: httpx.AsyncClient) -> None:
    for item in ("a", "b", "c"):
        assert (await small.get(f"/items/{item}")).status_code == 200
    assert (await small.get("/nowhere/at/all")).status_code == 404
    assert (await small.post("/items/a")).status_code == 405
    assert (await small.get("/denied")).status_code == 401
    samples = await scrape_small(small)
    http = "helixflow_http_requests_total"
    assert count(samples, http, route="/items/{item_id}", method="GET", status="200") == 3
    assert count(samples, http, route="/items/{item_id}", method="POST", status="405") == 1
    assert count(samples, http, route="other", method="GET", status="404") == 1
    assert count(samples, http, route="/denied", method="GET", status="401") == 1
    routes = {dict(labels)["route"] for (name, labels) in samples if name == http}
    assert not any("/items/a" in route for route in routes)


async def test_routes_of_included_routers_carry_their_prefix(small: httpx.AsyncClient) -> None:
    assert (await small.get("/v9/things/t1")).status_code == 200
    assert (await small.get("/v9/things/t2")).status_code == 200
    samples = await scrape_small(small)
    http = "helixflow_http_requests_total"
    assert count(samples, http, route="/v9/things/{thing_id}", method="GET", status="200") == 2


async def test_a_request_refused_before_routing_keeps_its_route(
    small: httpx.AsyncClient,
) -> None:
    assert (await small.get("/v9/guarded/key_123")).status_code == 401
    samples = await scrape_small(small)
    http = "helixflow_http_requests_total"
    assert count(samples, http, route="/v9/guarded/{key_id}", method="GET", status="401") == 1


async def test_a_429_is_counted_by_its_reason(small: httpx.AsyncClient) -> None:
    assert (await small.get("/full")).status_code == 429
    assert (await small.get("/full")).status_code == 429
    samples = await scrape_small(small)
    assert count(samples, "helixflow_rate_limit_rejections_total", reason="queue_full") == 2
    http = {"route": "/full", "method": "GET", "status": "429"}
    assert count(samples, "helixflow_http_requests_total", **http) == 2


async def test_the_scrape_itself_is_counted(small: httpx.AsyncClient) -> None:
    await scrape_small(small)
    samples = await scrape_small(small)
    http = {"route": "/metrics", "method": "GET", "status": "200"}
    assert count(samples, "helixflow_http_requests_total", **http) == 1


async def test_the_path_is_configurable_and_absent_metrics_are_a_404() -> None:
    transport = httpx.ASGITransport(app=small_app("/internal/prometheus"))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        samples = await scrape_small(client, "/internal/prometheus")
        assert count(samples, "helixflow_build_info", version="0.0.1") == 1
        assert (await client.get("/metrics")).status_code == 404
    transport = httpx.ASGITransport(app=small_app(with_metrics=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/metrics")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


# --- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    started = {name: FakeUpstream(name).start() for name in ("acme", "backup")}
    yield started
    for fake in started.values():
        fake.stop()


@pytest.fixture(scope="module")
def server(
    fakes: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    config: dict[str, Any] = {
        "models": [
            {"id": LOCAL_MODEL, "bundled": LOCAL_MODEL, "parallel": 2, "context_size": 4096},
            {
                "id": ONE_SLOT,
                "bundled": LOCAL_MODEL,
                "parallel": 1,
                "context_size": 2048,
                "max_queue": 0,
            },
        ],
        "providers": [
            {
                "name": "acme",
                "base_url": fakes["acme"].base_url,
                "models": [{"name": "gpt-4o-mini", "fallbacks": ["backup-model"]}, LIMITED],
            },
            {"name": "backup", "base_url": fakes["backup"].base_url, "models": ["backup-model"]},
        ],
        "router": {
            "retry": {"attempts": 1},
            "cache": {"enabled": True},
            "probe_interval_s": 3600,
        },
        "security": {"limits": {"models": {LIMITED: {"rpm": 1}}}},
    }
    proc = ServerProcess(config, tmp_path_factory.mktemp("metrics"), "metrics")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def scrape(http: httpx.Client) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    return parse(response.text)


def chat(http: httpx.Client, model: str, text: str = "Say hello.", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return http.post(CHAT, json=body)


@dataclass
class Traffic:
    """Scrapes around one run of every kind of request, and what the replies said."""

    before: Samples
    holding: Samples
    """Scraped while a stream held the one-slot model."""
    after: Samples
    local_usage: list[dict[str, Any]]
    statuses: dict[str, int]
    strategies: set[str]

    def delta(self, name: str, **labels: str) -> float:
        return count(self.after, name, **labels) - count(self.before, name, **labels)

    def total_delta(self, name: str) -> float:
        def total(samples: Samples) -> float:
            return sum(v for (n, _), v in samples.items() if n == name)

        return total(self.after) - total(self.before)


@pytest.fixture(scope="module")
def traffic(server: ServerProcess, http: httpx.Client, fakes: dict[str, FakeUpstream]) -> Traffic:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    before = scrape(http)
    statuses: dict[str, int] = {}
    usage: list[dict[str, Any]] = []
    # Local, then streamed with usage: sampled (temperature 1), so never from the cache.
    reply = client.chat.completions.create(
        model=LOCAL_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6
    )
    assert reply.usage is not None
    usage.append(reply.usage.model_dump())
    stream = client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage.append(chunk.usage.model_dump())
    assert len(usage) == 2
    # Upstream; then acme fails once and its fallback serves.
    statuses["upstream"] = chat(http, "gpt-4o-mini").status_code
    fakes["acme"].enqueue(status(500))
    fallback = chat(http, "gpt-4o-mini", "Fall back, please.")
    assert fallback.headers["x-helixflow-target"] == "backup/backup-model"
    statuses["fallback"] = fallback.status_code
    # The same deterministic request twice: a miss that stores, then a hit.
    unique = f"Cache me {uuid.uuid4().hex}"
    statuses["miss"] = chat(http, "gpt-4o-mini", unique, temperature=0).status_code
    hit = chat(http, "gpt-4o-mini", unique, temperature=0)
    assert hit.headers.get("x-helixflow-cache") == "hit"
    # One request per minute on the limited model: the second is refused.
    statuses["limited"] = chat(http, LIMITED).status_code
    statuses["limited_again"] = chat(http, LIMITED).status_code
    statuses["unknown_model"] = chat(http, f"no-such-model-{uuid.uuid4().hex}").status_code
    statuses["no_route"] = http.get("/no/such/path").status_code
    # Hold the only slot of one-slot with a stream; the next request finds no room.
    hold = {
        "model": ONE_SLOT,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    with http.stream("POST", CHAT, json=hold) as holding_stream:
        assert holding_stream.status_code == 200
        lines = holding_stream.iter_lines()  # kept: dropping it would close the stream
        next(lines)  # the slot is taken while this stream is open
        statuses["queue_full"] = chat(http, ONE_SLOT).status_code
        holding = scrape(http)
    wait_idle(http, ONE_SLOT)
    cancelled = {
        "endpoint": "chat.completions",
        "model": ONE_SLOT,
        "target": f"local/{ONE_SLOT}",
        "provider": "local",
        "status": "cancelled",
    }
    deadline = time.monotonic() + 30  # the server notices the client left on its own time
    while count(scrape(http), "helixflow_inference_requests_total", **cancelled) < 1:
        assert time.monotonic() < deadline, "the abandoned stream was never counted"
        time.sleep(0.1)
    after = scrape(http)
    strategies = {
        dict(labels)["strategy"]
        for (name, labels) in after
        if name == "helixflow_router_decisions_total"
    }
    return Traffic(before, holding, after, usage, statuses, strategies)


def test_the_requests_were_answered_as_planned(traffic: Traffic) -> None:
    assert traffic.statuses == {
        "upstream": 200,
        "fallback": 200,
        "miss": 200,
        "limited": 200,
        "limited_again": 429,
        "unknown_model": 404,
        "no_route": 404,
        "queue_full": 429,
    }


EXPECTED_LABELS: dict[str, set[str]] = {
    "helixflow_build_info": {"version"},
    "helixflow_http_requests_total": {"route", "method", "status"},
    "helixflow_inference_requests_total": {"endpoint", "model", "target", "provider", "status"},
    "helixflow_request_duration_seconds_bucket": {"endpoint", "model", "le"},
    "helixflow_request_duration_seconds_count": {"endpoint", "model"},
    "helixflow_request_duration_seconds_sum": {"endpoint", "model"},
    "helixflow_time_to_first_token_seconds_bucket": {"endpoint", "model", "le"},
    "helixflow_time_to_first_token_seconds_count": {"endpoint", "model"},
    "helixflow_prompt_tokens_total": {"model", "target"},
    "helixflow_completion_tokens_total": {"model", "target"},
    "helixflow_cached_prompt_tokens_total": {"model", "target"},
    "helixflow_response_cache_hits_total": set(),
    "helixflow_response_cache_misses_total": set(),
    "helixflow_response_cache_bytes": set(),
    "helixflow_rate_limit_rejections_total": {"reason"},
    "helixflow_router_decisions_total": {"strategy", "outcome"},
    "helixflow_router_fallback_attempts_total": {"target"},
    "helixflow_router_circuit_state": {"target"},
    "helixflow_router_target_in_flight": {"target"},
    "helixflow_engine_active_sequences": {"model"},
    "helixflow_engine_queue_depth": {"model"},
    "helixflow_engine_batch_tokens_total": {"model"},
    "helixflow_engine_steps_total": {"model"},
    "helixflow_kv_cache_cells_used": {"model"},
    "helixflow_kv_cache_cells": {"model"},
    "helixflow_kv_prefix_reused_tokens_total": {"model"},
    "helixflow_kv_store_hits_total": {"tier"},
    "helixflow_kv_store_misses_total": set(),
    "helixflow_kv_store_bytes": {"tier"},
    "helixflow_telemetry_queue_events": set(),
    "helixflow_telemetry_lag_seconds": set(),
    "helixflow_telemetry_spool_bytes": set(),
    "helixflow_telemetry_events_written_total": set(),
    "helixflow_db_pool_size": set(),
    "helixflow_db_pool_checked_out": set(),
    "helixflow_db_pool_overflow": set(),
    "process_cpu_seconds_total": set(),
    "process_resident_memory_bytes": set(),
    "process_start_time_seconds": set(),
    "python_info": {"implementation", "major", "minor", "patchlevel", "version"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_LABELS))
def test_every_family_is_exported_with_its_labels(traffic: Traffic, name: str) -> None:
    labels = [set(dict(labels)) for (n, labels) in traffic.after if n == name]
    assert labels, f"no {name} series"
    assert all(found == EXPECTED_LABELS[name] for found in labels), labels


def test_local_requests_count_their_tokens(traffic: Traffic) -> None:
    served = {
        "endpoint": "chat.completions",
        "model": LOCAL_MODEL,
        "target": f"local/{LOCAL_MODEL}",
        "provider": "local",
        "status": "success",
    }
    assert traffic.delta("helixflow_inference_requests_total", **served) == 2
    tokens = {"model": LOCAL_MODEL, "target": f"local/{LOCAL_MODEL}"}
    prompt = sum(u["prompt_tokens"] for u in traffic.local_usage)
    completion = sum(u["completion_tokens"] for u in traffic.local_usage)
    assert prompt > 0
    assert completion > 0
    assert traffic.delta("helixflow_prompt_tokens_total", **tokens) == prompt
    assert traffic.delta("helixflow_completion_tokens_total", **tokens) == completion
    latency = {"endpoint": "chat.completions", "model": LOCAL_MODEL}
    assert traffic.delta("helixflow_request_duration_seconds_count", **latency) == 2
    assert traffic.delta("helixflow_time_to_first_token_seconds_count", **latency) == 2
    cached = sum(
        (u["prompt_tokens_details"] or {}).get("cached_tokens") or 0 for u in traffic.local_usage
    )
    assert traffic.delta("helixflow_cached_prompt_tokens_total", **tokens) == cached
    # The engine computed every token but the reused prefix, in steps.
    model = {"model": LOCAL_MODEL}
    decoded = traffic.delta("helixflow_engine_batch_tokens_total", **model)
    reused = traffic.delta("helixflow_kv_prefix_reused_tokens_total", **model)
    assert decoded + reused >= prompt + completion
    assert decoded < prompt + completion + 50  # nothing else ran on this model
    assert traffic.delta("helixflow_engine_steps_total", **model) >= completion


def test_upstream_requests_fallbacks_and_cache_hits(traffic: Traffic) -> None:
    def requests(target: str, provider: str) -> float:
        return traffic.delta(
            "helixflow_inference_requests_total",
            endpoint="chat.completions",
            model="gpt-4o-mini",
            target=target,
            provider=provider,
            status="success",
        )

    assert requests("acme/gpt-4o-mini", "acme") == 2  # the first, and the cache miss
    assert requests("backup/backup-model", "backup") == 1  # the fallback
    assert requests("none", "none") == 1  # the cache hit: no target was asked
    tokens = {"model": "gpt-4o-mini", "target": "acme/gpt-4o-mini"}
    assert traffic.delta("helixflow_completion_tokens_total", **tokens) == 2 * 4
    assert traffic.delta("helixflow_router_fallback_attempts_total", target="acme/gpt-4o-mini") == 1
    assert traffic.delta("helixflow_response_cache_hits_total") == 1
    assert traffic.delta("helixflow_response_cache_misses_total") >= 1
    assert count(traffic.after, "helixflow_response_cache_bytes") > 0


def test_routing_decisions_by_outcome(traffic: Traffic) -> None:
    def outcome(name: str) -> float:
        return sum(
            traffic.delta("helixflow_router_decisions_total", strategy=s, outcome=name)
            for s in traffic.strategies
        )

    # served: 2 local, upstream, cache miss, first limited; fallback: 1; failed: the full slot.
    # (The cache hit, the refused and the unknown model never reached the router.)
    assert outcome("fallback") == 1
    assert outcome("failed") == 1
    assert outcome("served") == 6  # ... and the stream that held the slot


def test_refusals_are_counted_by_reason(traffic: Traffic) -> None:
    rejections = "helixflow_rate_limit_rejections_total"
    assert traffic.delta(rejections, reason="requests") == 1
    assert traffic.delta(rejections, reason="queue_full") == 1
    assert traffic.total_delta(rejections) == 2
    refused = {
        "endpoint": "chat.completions",
        "model": ONE_SLOT,
        "target": f"local/{ONE_SLOT}",
        "provider": "local",
        "status": "error",
    }
    assert traffic.delta("helixflow_inference_requests_total", **refused) == 1
    assert (
        traffic.delta("helixflow_router_fallback_attempts_total", target=f"local/{ONE_SLOT}") == 1
    )
    limited = {
        "endpoint": "chat.completions",
        "model": LIMITED,
        "target": "none",
        "provider": "none",
        "status": "error",
    }
    assert traffic.delta("helixflow_inference_requests_total", **limited) == 1


def test_unknown_models_and_paths_are_bounded(traffic: Traffic) -> None:
    unknown = {
        "endpoint": "chat.completions",
        "model": "unknown",
        "target": "none",
        "provider": "none",
        "status": "error",
    }
    assert traffic.delta("helixflow_inference_requests_total", **unknown) == 1
    http = "helixflow_http_requests_total"
    assert traffic.delta(http, route="other", method="GET", status="404") == 1
    assert traffic.delta(http, route=CHAT, method="POST", status="404") == 1
    assert traffic.delta(http, route=CHAT, method="POST", status="429") == 2
    models = {
        dict(labels)["model"]
        for (name, labels) in traffic.after
        if name == "helixflow_inference_requests_total"
    }
    assert not any(m.startswith("no-such-model") for m in models)


def test_load_gauges_show_a_held_slot(traffic: Traffic) -> None:
    assert count(traffic.holding, "helixflow_engine_active_sequences", model=ONE_SLOT) == 1
    in_flight = "helixflow_router_target_in_flight"
    assert count(traffic.holding, in_flight, target=f"local/{ONE_SLOT}") == 1
    assert count(traffic.after, "helixflow_engine_active_sequences", model=ONE_SLOT) == 0
    assert count(traffic.after, "helixflow_kv_cache_cells", model=ONE_SLOT) > 0
    for target in ("local/one-slot", "acme/gpt-4o-mini", "backup/backup-model"):
        assert count(traffic.after, "helixflow_router_circuit_state", target=target) == 0
        assert count(traffic.after, "helixflow_router_target_in_flight", target=target) == 0


def test_the_telemetry_writer_is_visible(traffic: Traffic) -> None:
    assert traffic.delta("helixflow_telemetry_events_written_total") > 0
    assert count(traffic.after, "helixflow_db_pool_size") >= 0


def test_the_build_is_named(traffic: Traffic, http: httpx.Client) -> None:
    version = http.get("/health").json()["version"]
    assert count(traffic.after, "helixflow_build_info", version=version) == 1


# --- a server in multiprocess mode -----------------------------------------------------------


def test_a_server_in_multiprocess_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker with PROMETHEUS_MULTIPROC_DIR: its figures go through the directory, and a
    clean stop withdraws its gauges but keeps its counts."""
    directory = tmp_path / "prometheus"
    prepare_multiproc_dir(directory)
    monkeypatch.setenv(MULTIPROC_ENV_VAR, str(directory))  # inherited by the server
    model = {"id": LOCAL_MODEL, "bundled": LOCAL_MODEL, "parallel": 1, "context_size": 1024}
    config: dict[str, Any] = {"models": [model]}
    proc = ServerProcess(config, tmp_path, "multiproc")
    try:
        with httpx.Client(base_url=proc.base_url, timeout=60) as client:
            assert chat(client, LOCAL_MODEL, max_tokens=4).status_code == 200
            samples = scrape(client)
    finally:
        proc.stop()
    served = {
        "endpoint": "chat.completions",
        "model": LOCAL_MODEL,
        "target": f"local/{LOCAL_MODEL}",
        "provider": "local",
        "status": "success",
    }
    assert count(samples, "helixflow_inference_requests_total", **served) == 1
    assert count(samples, "helixflow_engine_steps_total", model=LOCAL_MODEL) > 0
    active = ("helixflow_engine_active_sequences", frozenset({("model", LOCAL_MODEL)}))
    assert active in samples
    assert count(samples, "helixflow_build_info", version=__version__) == 1
    assert count(samples, "process_resident_memory_bytes") > 0
    files = [path.name for path in directory.glob("*.db")]
    assert any(name.startswith("counter_") for name in files), files
    assert not any(name.startswith("gauge_live") for name in files), files
