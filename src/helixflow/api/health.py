"""GET /health (liveness) and GET /ready (models loaded, with their load)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from helixflow import __version__
from helixflow.api.deps import get_engines, get_store
from helixflow.engine.kvstore import SessionKVStore
from helixflow.engine.registry import EngineRegistry
from helixflow.store.runtime import Store

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    uptime_s: float


class ModelReadiness(BaseModel):
    id: str
    loaded: bool
    active_sequences: int = 0
    queued_requests: int = 0
    kv_cells_used: int = 0
    kv_cells_total: int = 0
    kv_restores: int = Field(
        default=0, description="Prompts that started from a saved session state."
    )
    kv_restore_failures: int = Field(
        default=0, description="Saved states llama.cpp refused (the prompt was computed)."
    )


class TelemetryReadiness(BaseModel):
    state: Literal["ok", "degraded", "stopped", "disabled"]
    reason: str | None = None
    queued_events: int = 0
    spool_bytes: int = 0
    lag_s: float = 0.0
    written_total: int = 0
    spooled_total: int = 0
    replayed_total: int = 0


class DatabaseReadiness(BaseModel):
    dialect: str
    schema_revision: str | None
    pool_size: int
    pool_checked_out: int
    pool_overflow: int


class KVCacheReadiness(BaseModel):
    hits: dict[str, int] = Field(description="Restores per tier: ram, disk, s3.")
    misses: int
    saves: int
    corrupt: int = Field(description="Blobs discarded for a failed checksum.")
    stale: int = Field(description="Blobs discarded because another model build made them.")
    demoted: int
    errors: int
    bytes: dict[str, int] = Field(description="Bytes held per tier.")


class Readiness(BaseModel):
    status: Literal["ready", "loading", "degraded"] = Field(
        description="`degraded`: serving, but something is wrong (see `reason`), e.g. the "
        "database is unreachable and request records are spooled to disk."
    )
    reason: str | None = None
    models: list[ModelReadiness]
    database: DatabaseReadiness | None = None
    telemetry: TelemetryReadiness | None = None
    kv_cache: KVCacheReadiness | None = None


@router.get("/health", response_model=Health, summary="Liveness")
async def health(request: Request) -> Health:
    started: float = request.app.state.started_at
    return Health(version=__version__, uptime_s=round(time.monotonic() - started, 3))


@router.get(
    "/ready",
    response_model=Readiness,
    summary="Readiness: every model loaded",
    responses={503: {"model": Readiness, "description": "Still loading"}},
)
async def ready(
    request: Request,
    engines: Annotated[EngineRegistry, Depends(get_engines)],
    store: Annotated[Store, Depends(get_store)],
) -> JSONResponse:
    models = []
    for engine in engines:
        if engine.ready:
            s = engine.stats()
            models.append(
                ModelReadiness(
                    id=engine.config.id,
                    loaded=True,
                    active_sequences=s.active_sequences,
                    queued_requests=s.queued_requests,
                    kv_cells_used=s.kv_cells_used,
                    kv_cells_total=s.kv_cells_total,
                    kv_restores=s.kv_restores,
                    kv_restore_failures=s.kv_restore_failures,
                )
            )
        else:
            models.append(ModelReadiness(id=engine.config.id, loaded=False))
    telemetry = _telemetry(store)
    status: Literal["ready", "loading", "degraded"] = "ready" if engines.ready else "loading"
    reason = None
    if engines.ready and telemetry.state == "degraded":
        status, reason = "degraded", telemetry.reason
    pool = store.database.pool_stats()
    body = Readiness(
        status=status,
        reason=reason,
        models=models,
        database=DatabaseReadiness(
            dialect=store.database.dialect,
            schema_revision=store.schema.current,
            pool_size=pool.size,
            pool_checked_out=pool.checked_out,
            pool_overflow=pool.overflow,
        ),
        telemetry=telemetry,
        kv_cache=_kv_cache(request),
    )
    return JSONResponse(body.model_dump(), status_code=200 if engines.ready else 503)


def _kv_cache(request: Request) -> KVCacheReadiness | None:
    kv_store: SessionKVStore | None = getattr(request.app.state, "kv_store", None)
    if kv_store is None:
        return None
    return KVCacheReadiness.model_validate(kv_store.stats().as_dict())


def _telemetry(store: Store) -> TelemetryReadiness:
    health = store.telemetry_health()
    if health is None:
        return TelemetryReadiness(state="disabled")
    return TelemetryReadiness(
        state=health.state,
        reason=health.reason,
        queued_events=health.queued,
        spool_bytes=health.spool_bytes,
        lag_s=round(health.lag_s, 3),
        written_total=health.written_total,
        spooled_total=health.spooled_total,
        replayed_total=health.replayed_total,
    )
