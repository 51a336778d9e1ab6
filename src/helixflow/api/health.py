"""GET /health (liveness) and GET /ready (models loaded, with their load)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from helixflow import __version__
from helixflow.api.deps import get_engines
from helixflow.engine.registry import EngineRegistry

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


class Readiness(BaseModel):
    status: Literal["ready", "loading"]
    models: list[ModelReadiness]


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
async def ready(engines: Annotated[EngineRegistry, Depends(get_engines)]) -> JSONResponse:
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
                )
            )
        else:
            models.append(ModelReadiness(id=engine.config.id, loaded=False))
    status: Literal["ready", "loading"] = "ready" if engines.ready else "loading"
    body = Readiness(status=status, models=models)
    return JSONResponse(body.model_dump(), status_code=200 if engines.ready else 503)
