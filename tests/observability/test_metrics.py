"""The Metrics class: names, labels and values as a scrape shows them, label values bounded,
state read at scrape time, and several worker processes summed through one directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helixflow.engine.base import EngineStats
from helixflow.engine.kvstore import KVStoreStats
from helixflow.errors import BudgetExceededError, ConfigurationError, QueueFullError, RateLimitError
from helixflow.observability.metrics import (
    DURATION_BUCKETS,
    TTFT_BUCKETS,
    Metrics,
    prepare_multiproc_dir,
    rejection_reason,
)
from helixflow.observability_config import MULTIPROC_ENV_VAR, ObservabilityConfig
from helixflow.router.cache import CachedReply, MemoryResponseCache
from helixflow.router.catalogue import Catalogue
from helixflow.router.health import HealthBoard
from helixflow.routing_config import BreakerConfig, GroupConfig
from helixflow.security.identity import ANONYMOUS
from helixflow.security.limits import Limiter
from helixflow.security.ratelimit import MemoryLimitBackend
from helixflow.security_config import LimitsConfig, LimitSet
from helixflow.store.database import PoolStats
from helixflow.store.telemetry.events import InferenceEvent, RoutingEvent
from helixflow.store.telemetry.writer import WriterHealth
from tests.router.factories import target

REPO = Path(__file__).resolve().parents[2]
LOCAL = target("local/small", aliases=("small-alias",))
ACME = target("acme/gpt-4o-mini")


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV_VAR, raising=False)


# --- helpers ---------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, labels) -> value) of one scrape."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return parse(body.decode())


def parse(text: str) -> tuple[dict[str, str], Samples]:
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def inference(
    model: str | None = "small",
    *,
    status: str = "success",
    latency_ms: float = 120.0,
    ttft_ms: float | None = 30.0,
    **fields: Any,
) -> InferenceEvent:
    return InferenceEvent(
        request_id="r",
        endpoint="chat.completions",
        status=status,
        http_status=200 if status == "success" else 500,
        latency_ms=latency_ms,
        requested_model=model,
        ttft_ms=ttft_ms,
        **fields,
    )


def decision(chosen: str | None, *attempts: tuple[str, Any]) -> RoutingEvent:
    return RoutingEvent(
        request_id="r",
        strategy="weighted",
        chosen_target=chosen,
        attempts=[{"target": t, "status": s} for t, s in attempts],
        fallback_attempts=sum(1 for _, s in attempts if s != "ok"),
    )


@dataclass
class FakeEngine:
    """An engine as the state collector sees one: its id, whether it is loaded, its stats."""

    id: str
    stats_now: EngineStats
    ready: bool = True
    config: SimpleNamespace = field(init=False)

    def __post_init__(self) -> None:
        self.config = SimpleNamespace(id=self.id)

    def stats(self) -> EngineStats:
        return self.stats_now


def engine_stats(**fields: int) -> EngineStats:
    base = dict.fromkeys(
        (
            "active_sequences",
            "queued_requests",
            "kv_cells_used",
            "kv_cells_total",
            "steps",
            "tokens_generated",
            "prompt_tokens_processed",
            "prompt_tokens_reused",
        ),
        0,
    )
    return EngineStats(**{**base, **fields})


class FakeStore:
    def __init__(self) -> None:
        self.health = WriterHealth(
            state="ok",
            reason=None,
            queued=3,
            spool_bytes=4096,
            written_total=17,
            spooled_total=0,
            replayed_total=0,
            rejected_total=0,
            lag_s=0.25,
        )
        self.pool = PoolStats(size=5, checked_out=2, checked_in=3, overflow=1)
        self.database = SimpleNamespace(pool_stats=lambda: self.pool)

    def telemetry_health(self) -> WriterHealth | None:
        return self.health


def sources() -> SimpleNamespace:
    """``app.state`` with real router pieces and stand-ins for the loaded services."""
    catalogue = Catalogue([LOCAL, ACME], [GroupConfig(name="fast", targets=["acme/gpt-4o-mini"])])
    kv_stats = KVStoreStats()
    return SimpleNamespace(
        engines=[
            FakeEngine("small", engine_stats(active_sequences=2, queued_requests=1, steps=40)),
            FakeEngine("loading", engine_stats(), ready=False),
        ],
        router=SimpleNamespace(catalogue=catalogue, health=HealthBoard(catalogue, BreakerConfig())),
        routing=SimpleNamespace(cache=MemoryResponseCache(60, 1 << 20, 1 << 20)),
        kv_store=SimpleNamespace(stats=lambda: kv_stats),
        store=FakeStore(),
    )


def metrics_for(state: object | None = None) -> Metrics:
    return Metrics(ObservabilityConfig(metrics_multiproc_dir=None), version="1.2.3", sources=state)


# --- request figures -------------------------------------------------------------------------


def test_a_served_request_counts_once_with_its_latency_ttft_and_tokens() -> None:
    metrics = metrics_for(sources())
    event = inference(
        provider="local", prompt_tokens=11, completion_tokens=7, cached_tokens=5, latency_ms=80
    )
    metrics.observe_request(event, LOCAL)
    types, samples = scrape(metrics)
    assert types["helixflow_inference_requests"] == "counter"
    assert types["helixflow_request_duration_seconds"] == "histogram"
    labels = {"endpoint": "chat.completions", "model": "small"}
    served = {**labels, "target": "local/small", "provider": "local", "status": "success"}
    assert value(samples, "helixflow_inference_requests_total", **served) == 1
    assert value(samples, "helixflow_request_duration_seconds_count", **labels) == 1
    assert value(samples, "helixflow_request_duration_seconds_sum", **labels) == pytest.approx(0.08)
    # 80 ms lands in the 0.1 s bucket and above, not in 0.05 s.
    assert value(samples, "helixflow_request_duration_seconds_bucket", **labels, le="0.05") == 0
    assert value(samples, "helixflow_request_duration_seconds_bucket", **labels, le="0.1") == 1
    assert value(samples, "helixflow_time_to_first_token_seconds_count", **labels) == 1
    assert value(samples, "helixflow_time_to_first_token_seconds_sum", **labels) == 0.03
    tokens = {"model": "small", "target": "local/small"}
    assert value(samples, "helixflow_prompt_tokens_total", **tokens) == 11
    assert value(samples, "helixflow_completion_tokens_total", **tokens) == 7
    assert value(samples, "helixflow_cached_prompt_tokens_total", **tokens) == 5


def test_histogram_buckets_span_the_agreed_ranges() -> None:
    metrics = metrics_for()
    metrics.observe_request(inference(), LOCAL)
    _, samples = scrape(metrics)
    buckets = {
        float(labels["le"])
        for labels in series(samples, "helixflow_request_duration_seconds_bucket")
    }
    assert min(buckets) == DURATION_BUCKETS[0] == 0.005
    assert max(buckets - {float("inf")}) == DURATION_BUCKETS[-1] == 120
    ttft = {
        float(labels["le"])
        for labels in series(samples, "helixflow_time_to_first_token_seconds_bucket")
    }
    assert min(ttft) == TTFT_BUCKETS[0] == 0.001
    assert max(ttft - {float("inf")}) == TTFT_BUCKETS[-1] == 30


def test_a_request_without_a_first_token_or_target_is_labelled_none() -> None:
    metrics = metrics_for(sources())
    metrics.observe_request(inference(status="error", ttft_ms=None, provider="acme"), None)
    _, samples = scrape(metrics)
    labels = series(samples, "helixflow_inference_requests_total")
    assert labels == [
        {
            "endpoint": "chat.completions",
            "model": "small",
            "target": "none",
            "provider": "none",
            "status": "error",
        }
    ]
    assert series(samples, "helixflow_time_to_first_token_seconds_count") == []
    assert series(samples, "helixflow_prompt_tokens_total") == []


def test_models_outside_the_catalogue_share_one_label() -> None:
    metrics = metrics_for(sources())
    for name in ("small", "small-alias", "acme/gpt-4o-mini", "gpt-4o-mini", "fast"):
        metrics.observe_request(inference(name), LOCAL)
    for i in range(50):
        metrics.observe_request(inference(f"made-up-{i}"), None)
    metrics.observe_request(inference(None), None)
    _, samples = scrape(metrics)
    models = {labels["model"] for labels in series(samples, "helixflow_inference_requests_total")}
    assert models == {"small", "small-alias", "acme/gpt-4o-mini", "gpt-4o-mini", "fast", "unknown"}
    unknown = {
        "endpoint": "chat.completions",
        "model": "unknown",
        "target": "none",
        "provider": "none",
        "status": "success",
    }
    assert value(samples, "helixflow_inference_requests_total", **unknown) == 51


def test_every_model_is_unknown_before_the_router_exists() -> None:
    metrics = metrics_for(SimpleNamespace())
    assert metrics.model_label("small") == "unknown"


def test_http_requests_are_counted_by_route_template_with_bounded_methods() -> None:
    metrics = metrics_for()
    metrics.observe_http("/api/v1/keys/{key_id}", "DELETE", 204)
    metrics.observe_http("/api/v1/keys/{key_id}", "DELETE", 204)
    metrics.observe_http(None, "GET", 404)
    metrics.observe_http("/v1/models", "BREW", 405)
    _, samples = scrape(metrics)
    name = "helixflow_http_requests_total"
    assert value(samples, name, route="/api/v1/keys/{key_id}", method="DELETE", status="204") == 2
    assert value(samples, name, route="other", method="GET", status="404") == 1
    assert value(samples, name, route="/v1/models", method="other", status="405") == 1


def test_routing_decisions_and_fallback_attempts() -> None:
    metrics = metrics_for()
    metrics.observe_decision(decision("acme/gpt-4o-mini", ("acme/gpt-4o-mini", "ok")))
    # a retry on the same target, then success: still served by the first choice
    metrics.observe_decision(
        decision("acme/gpt-4o-mini", ("acme/gpt-4o-mini", 500), ("acme/gpt-4o-mini", "ok"))
    )
    metrics.observe_decision(
        decision("local/small", ("acme/gpt-4o-mini", 503), ("local/small", "ok"))
    )
    metrics.observe_decision(decision(None, ("acme/gpt-4o-mini", 429), ("local/small", 429)))
    skipped = RoutingEvent(
        request_id="r",
        strategy="round_robin",
        chosen_target="local/small",
        attempts=[
            {"target": "acme/gpt-4o-mini", "skipped": "circuit open"},
            {"target": "local/small", "status": "ok", "retry": 0},
        ],
        fallback_attempts=1,
    )
    metrics.observe_decision(skipped)
    _, samples = scrape(metrics)
    decisions = "helixflow_router_decisions_total"
    assert value(samples, decisions, strategy="weighted", outcome="served") == 2
    assert value(samples, decisions, strategy="weighted", outcome="fallback") == 1
    assert value(samples, decisions, strategy="weighted", outcome="failed") == 1
    assert value(samples, decisions, strategy="round_robin", outcome="fallback") == 1
    fallbacks = "helixflow_router_fallback_attempts_total"
    assert value(samples, fallbacks, target="acme/gpt-4o-mini") == 4
    assert value(samples, fallbacks, target="local/small") == 1


async def test_rejection_reasons_follow_the_limiters_own_messages() -> None:
    limits = LimitsConfig(
        models={
            "rpm": LimitSet(rpm=1),
            "tpm": LimitSet(tpm=10),
            "parallel": LimitSet(max_parallel=1),
        }
    )
    limiter = Limiter(limits, MemoryLimitBackend(), None)
    refusals: dict[str, RateLimitError] = {}
    for model, prompt_tokens in (("rpm", 1), ("tpm", 8), ("parallel", 1)):
        await limiter.admit(ANONYMOUS, model, prompt_tokens)
        with pytest.raises(RateLimitError) as refused:
            await limiter.admit(ANONYMOUS, model, prompt_tokens)
        refusals[model] = refused.value
    assert rejection_reason(refusals["rpm"].code, refusals["rpm"].message) == "requests"
    assert rejection_reason(refusals["tpm"].code, refusals["tpm"].message) == "tokens"
    assert rejection_reason(refusals["parallel"].code, refusals["parallel"].message) == "parallel"
    budget = BudgetExceededError("The key's budget for the month is spent.")
    assert rejection_reason(budget.code, budget.message) == "budget"
    full = QueueFullError("small", 4, retry_after=1)
    assert rejection_reason(full.code, full.message) == "queue_full"
    assert rejection_reason("too_many_login_attempts", "Too many login attempts") == "other"
    assert rejection_reason(None, None) == "other"

    metrics = metrics_for()
    metrics.observe_rejection(refusals["rpm"].code, refusals["rpm"].message)
    metrics.observe_rejection(full.code, full.message)
    metrics.observe_rejection(full.code, full.message)
    _, samples = scrape(metrics)
    assert value(samples, "helixflow_rate_limit_rejections_total", reason="requests") == 1
    assert value(samples, "helixflow_rate_limit_rejections_total", reason="queue_full") == 2


# --- state figures ---------------------------------------------------------------------------


async def test_state_is_read_when_scraped() -> None:
    state = sources()
    metrics = metrics_for(state)
    types, samples = scrape(metrics)
    assert value(samples, "helixflow_build_info", version="1.2.3") == 1
    assert value(samples, "helixflow_engine_active_sequences", model="small") == 2
    assert value(samples, "helixflow_engine_queue_depth", model="small") == 1
    assert value(samples, "helixflow_engine_steps_total", model="small") == 40
    assert {"model": "loading"} not in series(samples, "helixflow_engine_active_sequences")
    assert value(samples, "helixflow_router_circuit_state", target="acme/gpt-4o-mini") == 0
    assert value(samples, "helixflow_router_target_in_flight", target="local/small") == 0
    assert value(samples, "helixflow_kv_store_misses_total") == 0
    assert {labels["tier"] for labels in series(samples, "helixflow_kv_store_hits_total")} == {
        "ram",
        "disk",
        "s3",
    }
    assert value(samples, "helixflow_telemetry_queue_events") == 3
    assert value(samples, "helixflow_telemetry_lag_seconds") == 0.25
    assert value(samples, "helixflow_telemetry_spool_bytes") == 4096
    assert value(samples, "helixflow_telemetry_events_written_total") == 17
    assert value(samples, "helixflow_db_pool_size") == 5
    assert value(samples, "helixflow_db_pool_checked_out") == 2
    assert value(samples, "helixflow_db_pool_overflow") == 1
    assert types["helixflow_engine_steps"] == "counter"
    assert types["helixflow_engine_active_sequences"] == "gauge"
    assert "process_resident_memory_bytes" in types
    assert "python_info" in types

    # Change the services, observe nothing: the next scrape shows the new state.
    state.engines[0].stats_now = engine_stats(
        steps=55,
        tokens_generated=9,
        prompt_tokens_processed=30,
        prompt_tokens_reused=12,
        kv_cells_used=64,
        kv_cells_total=4096,
    )
    board: HealthBoard = state.router.health
    board.force(ACME, "open")
    board.force(LOCAL, "half_open")
    assert board.begin(LOCAL)
    cache: MemoryResponseCache = state.routing.cache
    assert await cache.get("k") is None
    await cache.put("k", CachedReply(b"{}", "local/small", 0.0))
    assert await cache.get("k") is not None
    kv = state.kv_store.stats()
    kv.hits["disk"] += 2
    kv.misses += 1
    kv.bytes["ram"] = 1000
    _, samples = scrape(metrics)
    assert value(samples, "helixflow_engine_active_sequences", model="small") == 0
    assert value(samples, "helixflow_engine_steps_total", model="small") == 55
    assert value(samples, "helixflow_engine_batch_tokens_total", model="small") == 39
    assert value(samples, "helixflow_kv_prefix_reused_tokens_total", model="small") == 12
    assert value(samples, "helixflow_kv_cache_cells_used", model="small") == 64
    assert value(samples, "helixflow_kv_cache_cells", model="small") == 4096
    assert value(samples, "helixflow_router_circuit_state", target="acme/gpt-4o-mini") == 2
    assert value(samples, "helixflow_router_circuit_state", target="local/small") == 1
    assert value(samples, "helixflow_router_target_in_flight", target="local/small") == 1
    assert value(samples, "helixflow_response_cache_hits_total") == 1
    assert value(samples, "helixflow_response_cache_misses_total") == 1
    assert value(samples, "helixflow_response_cache_bytes") == cache.stats().bytes > 0
    assert value(samples, "helixflow_kv_store_hits_total", tier="disk") == 2
    assert value(samples, "helixflow_kv_store_misses_total") == 1
    assert value(samples, "helixflow_kv_store_bytes", tier="ram") == 1000


def test_a_failing_service_leaves_the_rest_of_the_scrape() -> None:
    state = sources()

    def broken() -> EngineStats:
        raise RuntimeError("engine gone")

    state.engines[0].stats = broken
    _, samples = scrape(metrics_for(state))
    assert series(samples, "helixflow_engine_active_sequences") == []
    assert value(samples, "helixflow_db_pool_size") == 5


def test_two_apps_keep_their_figures_apart() -> None:
    first, second = metrics_for(), metrics_for()
    first.observe_http("/health", "GET", 200)
    _, samples = scrape(second)
    assert series(samples, "helixflow_http_requests_total") == []
    _, samples = scrape(first)
    health = {"route": "/health", "method": "GET", "status": "200"}
    assert value(samples, "helixflow_http_requests_total", **health) == 1


def test_openmetrics_when_asked() -> None:
    body, content_type = metrics_for().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


# --- several worker processes ----------------------------------------------------------------


def test_multiprocess_mode_needs_the_environment_variable(tmp_path: Path) -> None:
    config = ObservabilityConfig(metrics_multiproc_dir=tmp_path)
    with pytest.raises(ConfigurationError, match=MULTIPROC_ENV_VAR):
        Metrics(config, version="1")


def test_the_directory_defaults_to_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV_VAR, str(tmp_path))
    assert ObservabilityConfig().metrics_multiproc_dir == tmp_path


WORKER = textwrap.dedent(
    """
    import json, os, sys
    from types import SimpleNamespace
    from helixflow.engine.base import EngineStats
    from helixflow.observability.metrics import Metrics
    from helixflow.observability_config import ObservabilityConfig
    from helixflow.store.telemetry.events import InferenceEvent

    job = json.loads(sys.argv[1])
    stats = EngineStats(
        active_sequences=job["active"], queued_requests=0, kv_cells_used=0, kv_cells_total=0,
        steps=job["steps"], tokens_generated=0, prompt_tokens_processed=0,
        prompt_tokens_reused=0,
    )
    engine = SimpleNamespace(config=SimpleNamespace(id="small"), ready=True, stats=lambda: stats)
    breaker = SimpleNamespace(state=job["circuit"])
    health = [SimpleNamespace(target=SimpleNamespace(id="acme/m"), in_flight=1, breaker=breaker)]
    catalogue = SimpleNamespace(targets={}, groups={"auto": None})
    state = SimpleNamespace(
        engines=[engine], router=SimpleNamespace(health=health, catalogue=catalogue)
    )
    metrics = Metrics(
        ObservabilityConfig(), version="1.2.3", sources=state if job["state"] else None
    )
    assert metrics.multiprocess
    for _ in range(job["requests"]):
        metrics.observe_request(
            InferenceEvent(
                request_id="r", endpoint="chat.completions", status="success", http_status=200,
                latency_ms=20.0, requested_model="auto", ttft_ms=5.0, completion_tokens=3,
            ),
            SimpleNamespace(id="acme/m"),
        )
        metrics.observe_http("/v1/chat/completions", "POST", 200)
    metrics.publish()
    if job["close"]:
        import asyncio
        asyncio.run(metrics.close())
    if job["scrape"]:
        sys.stdout.write(metrics.render()[0].decode())
    """
)


def run_worker(directory: Path, **job: Any) -> str:
    job = {
        "active": 0,
        "steps": 0,
        "circuit": "closed",
        "requests": 0,
        "state": True,
        "close": False,
        "scrape": False,
        **job,
    }
    env = {**os.environ, MULTIPROC_ENV_VAR: str(directory)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(job)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prometheus"
    prepare_multiproc_dir(directory)
    return directory


def test_workers_are_summed_through_one_directory(multiproc_dir: Path) -> None:
    run_worker(multiproc_dir, active=2, steps=10, circuit="closed", requests=3)
    run_worker(multiproc_dir, active=5, steps=7, circuit="open", requests=4)
    # A third process answers the scrape: it holds no state of its own.
    text = run_worker(multiproc_dir, state=False, scrape=True)
    types, samples = parse(text)
    labels = {"endpoint": "chat.completions", "model": "auto"}
    served = {**labels, "target": "acme/m", "provider": "none", "status": "success"}
    assert value(samples, "helixflow_inference_requests_total", **served) == 7
    assert value(samples, "helixflow_request_duration_seconds_count", **labels) == 7
    assert value(samples, "helixflow_request_duration_seconds_bucket", **labels, le="0.025") == 7
    assert value(samples, "helixflow_time_to_first_token_seconds_count", **labels) == 7
    assert value(samples, "helixflow_completion_tokens_total", model="auto", target="acme/m") == 21
    http = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
    assert value(samples, "helixflow_http_requests_total", **http) == 7
    # Gauges: loads summed over the workers, circuits at their worst; counters summed.
    assert value(samples, "helixflow_engine_active_sequences", model="small") == 7
    assert value(samples, "helixflow_router_target_in_flight", target="acme/m") == 2
    assert value(samples, "helixflow_router_circuit_state", target="acme/m") == 2
    assert value(samples, "helixflow_engine_steps_total", model="small") == 17
    assert types["helixflow_engine_steps"] == "counter"
    # One build_info however many workers; every worker's process figures.
    assert value(samples, "helixflow_build_info", version="1.2.3") == 1
    assert value(samples, "process_resident_memory_bytes") > 0
    assert series(samples, "helixflow_engine_active_sequences") == [{"model": "small"}]


def test_a_stopped_worker_withdraws_its_gauges_but_not_its_counts(multiproc_dir: Path) -> None:
    run_worker(multiproc_dir, active=2, steps=10, requests=1)
    run_worker(multiproc_dir, active=5, steps=7, requests=2, close=True)
    _, samples = parse(run_worker(multiproc_dir, state=False, scrape=True))
    assert value(samples, "helixflow_engine_active_sequences", model="small") == 2
    assert value(samples, "helixflow_engine_steps_total", model="small") == 17
    http = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
    assert value(samples, "helixflow_http_requests_total", **http) == 3


def test_prepare_empties_the_directory(multiproc_dir: Path) -> None:
    run_worker(multiproc_dir, requests=1)
    assert list(multiproc_dir.glob("*.db"))
    prepare_multiproc_dir(multiproc_dir)
    assert not list(multiproc_dir.glob("*.db"))
