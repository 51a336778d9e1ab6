"""The application factory: ``create_app(settings)`` builds every service once, in the lifespan."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.middleware.cors import CORSMiddleware

from helixflow import __version__
from helixflow.api import health, ui
from helixflow.api.admin.alerts import router as alerts_router
from helixflow.api.admin.analytics import router as analytics_router
from helixflow.api.admin.assignments import router as assignments_router
from helixflow.api.admin.decisions import router as decisions_router
from helixflow.api.admin.keys import router as keys_router
from helixflow.api.admin.routing import router as routing_router
from helixflow.api.admin.settings import router as settings_router
from helixflow.api.admin.users import router as users_router
from helixflow.api.auth import require
from helixflow.api.auth_routes import router as auth_router
from helixflow.api.errors import install_error_handlers
from helixflow.api.metrics import HTTPMetricsMiddleware, metrics_router
from helixflow.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from helixflow.api.openai.gateway import Gateway
from helixflow.api.openai.routes import router as openai_router
from helixflow.api.openai.serving_chat import ChatService
from helixflow.api.openai.serving_completions import CompletionService
from helixflow.api.openai.serving_embeddings import EmbeddingService
from helixflow.api.telemetry import TelemetryMiddleware
from helixflow.config import Settings
from helixflow.engine.kvstore import SessionEngine, SessionKVStore
from helixflow.engine.registry import EngineRegistry
from helixflow.observability.metrics import Metrics
from helixflow.observability.tracing import RequestIdSpanMiddleware, Tracing
from helixflow.router.runtime import LocalInfo, RouterRuntime
from helixflow.security.cors import cors_middleware_kwargs, trusted_origins
from helixflow.security.csrf import CSRFMiddleware
from helixflow.security.headers import SecurityHeadersMiddleware
from helixflow.security.middleware import AuthMiddleware
from helixflow.security.runtime import SecurityRuntime
from helixflow.store.repositories.kv_sessions import KVSessionRepository
from helixflow.store.runtime import Store

log = logging.getLogger(__name__)


def _local_info(engines: EngineRegistry) -> LocalInfo:
    def info(model_id: str) -> tuple[int | None, int]:
        served = engines.lookup(model_id)
        if not served.ready:
            return None, 0
        return served.info.context_size, served.stats().queued_requests

    return info


def app_from_environment() -> FastAPI:
    """The app of one worker of ``helixflow serve --workers N`` (a zero-argument factory for
    uvicorn or gunicorn): settings from the environment and ``HELIXFLOW_CONFIG``, and the
    worker's own spool and KV directories (``workers.py``)."""
    from helixflow.config import load_settings
    from helixflow.observability.logging import configure_logging
    from helixflow.workers import claim_slot, worker_settings

    settings = load_settings()
    configure_logging(settings.server.log_level, settings.observability.log_format)
    if settings.server.workers == 1:
        return create_app(settings)
    slot = claim_slot(settings.data_dir / "workers", settings.server.workers)
    log.info("worker %d (pid %d) starting", slot.index, os.getpid())
    app = create_app(worker_settings(settings, slot))
    app.state.worker_slot = slot
    return app


def create_app(
    settings: Settings, given: Store | None = None, tracing: Tracing | None = None
) -> FastAPI:
    """``given``: a store the caller opened already (``helixflow serve`` opens it before binding,
    to report a bad database cleanly); it is then closed with the app. ``tracing``: instead of
    the one ``settings.observability`` describes (tests pass ``Tracing.for_tests(exporter)``)."""
    traces = tracing if tracing is not None else Tracing.from_config(settings.observability)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = given if given is not None else await Store.open(settings)
        app.state.store = store
        app.state.database = store.database
        app.state.recorder = store
        engines = EngineRegistry(settings.models, retry_after_s=settings.server.retry_after_seconds)
        app.state.engines = engines
        app.state.kv_store = kv_store = (
            SessionKVStore(
                settings.kv_cache, settings.kv_dir, metadata=KVSessionRepository(store.database)
            )
            if settings.kv_cache.enabled
            else None
        )
        if kv_store is not None:
            for engine in engines:
                if isinstance(engine, SessionEngine):
                    engine.use_kv_store(kv_store)
        app.state.chat_service = ChatService(engines)
        app.state.completion_service = CompletionService(engines)
        app.state.embedding_service = EmbeddingService(engines)
        started = time.monotonic()
        routing: RouterRuntime | None = None
        security: SecurityRuntime | None = None
        try:
            security = await SecurityRuntime.open(settings, store.database)
            app.state.security = security
            app.state.accounts = security.accounts
            app.state.tokens = security.tokens
            app.state.auth_switch = security.switch
            app.state.authenticator = security.authenticator
            await engines.start()
            log.info("%d model(s) loaded in %.1fs", len(engines), time.monotonic() - started)
            routing = await RouterRuntime.open(settings, store.database, _local_info(engines))
            app.state.routing = routing
            app.state.router = routing.router
            app.state.gateway = Gateway(
                routing.router,
                routing.dispatcher,
                routing.providers,
                routing.cache,
                store,
                security.limiter,
                tracing=traces,
                metrics=metrics,
            )
            # Everything alive now (modules, schemas, the catalogue) lives as long as the
            # process: keep it out of the collector's sight, so that a full collection scans
            # only what requests allocate (it took ~100 ms, a p99 stall, otherwise).
            gc.collect()
            gc.freeze()
            if metrics is not None:
                metrics.start()
            yield
        finally:
            if metrics is not None:
                await metrics.close()
            if routing is not None:
                await routing.close()
            if security is not None:
                await security.close()
            await engines.stop()
            if kv_store is not None:
                await kv_store.drain()
            await store.close()
            traces.shutdown()  # exports the spans still pending

    app = FastAPI(
        title="HelixFlow",
        version=__version__,
        description="Self-hosted, OpenAI-compatible inference: a llama.cpp engine with "
        "continuous batching and a router over local models and upstream OpenAI-compatible "
        "providers, behind the OpenAI API.",
        lifespan=lifespan,
        telemetry=traces.fastapi_telemetry(),
    )
    app.state.settings = settings
    app.state.started_at = time.monotonic()
    app.state.tracing = traces
    observability = settings.observability
    metrics = (
        Metrics(observability, version=__version__, sources=app.state)
        if observability.metrics_enabled
        else None
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    # Outermost last: security headers, CORS, request id (and, tracing on, its attribute on
    # the SERVER span FastAPI opened around all of these), telemetry (which records even a
    # refused request), auth, CSRF, body limit (a forged or unauthenticated upload is refused
    # before it is read).
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(CSRFMiddleware, trusted_origins=trusted_origins(settings.security.cors))
    app.add_middleware(AuthMiddleware)
    app.add_middleware(TelemetryMiddleware)
    if traces.enabled:
        app.add_middleware(RequestIdSpanMiddleware)
    app.add_middleware(RequestIdMiddleware)
    cors = cors_middleware_kwargs(settings.security.cors)
    if cors is not None:
        app.add_middleware(CORSMiddleware, **cors)
    if settings.security.security_headers:
        app.add_middleware(SecurityHeadersMiddleware)
    if metrics is not None:  # outermost: it counts the status the client got
        app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)
    viewer = [Depends(require("viewer"))]
    app.include_router(health.router)
    app.include_router(ui.router)
    if metrics is not None:
        app.include_router(metrics_router(observability.metrics_path))
    app.include_router(auth_router)
    app.include_router(keys_router)
    app.include_router(users_router)
    app.include_router(settings_router)
    app.include_router(openai_router, dependencies=viewer)
    app.include_router(analytics_router, dependencies=viewer)
    app.include_router(routing_router, dependencies=viewer)
    app.include_router(assignments_router, dependencies=viewer)
    app.include_router(alerts_router, dependencies=viewer)
    app.include_router(decisions_router, dependencies=viewer)
    return app
