"""The router's state: targets with their health and load, groups, and caller feedback.

``GET /api/v1/router/targets``, ``POST /api/v1/router/targets/{id}/circuit``,
``GET /api/v1/router/groups``, ``POST /api/v1/router/feedback``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from helixflow.api.audit import audit
from helixflow.api.auth import require
from helixflow.api.deps import get_router
from helixflow.errors import NotFoundError
from helixflow.router.catalogue import Target
from helixflow.router.router import Router

router = APIRouter(prefix="/api/v1/router", tags=["router"])


class TargetState(BaseModel):
    id: str
    model: str
    provider: str
    kind: str
    capabilities: list[str]
    context_window: int | None
    input_price_per_mtok: float
    output_price_per_mtok: float
    quality: dict[str, float]
    region: str | None
    weight: float
    max_concurrency: int | None
    fallbacks: list[str]
    circuit: str = Field(description="closed, open or half_open")
    in_flight: int
    queue_depth: int
    ewma_latency_ms: float | None
    ewma_ttft_ms: float | None
    tokens_per_s: float | None
    successes: int
    failures: int
    last_error: str | None
    probe_ok: bool | None


class TargetList(BaseModel):
    data: list[TargetState]


class CircuitChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["closed", "open", "half_open"] = Field(
        description="`open` drains the target, `closed` puts it back at once."
    )


class GroupState(BaseModel):
    name: str
    strategy: str
    options: dict[str, Any]
    affinity: str
    targets: list[str]


class GroupList(BaseModel):
    data: list[GroupState]


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128, description="The reply's X-Request-Id.")
    score: float = Field(ge=0, le=1, description="How good the reply was, 0 (bad) to 1 (good).")


class FeedbackAccepted(BaseModel):
    request_id: str
    target: str


def _state(routing: Router, target: Target) -> TargetState:
    stats = routing.health.stats(target)
    health = routing.health[target.id]
    return TargetState(
        id=target.id,
        model=target.model,
        provider=target.provider,
        kind=target.kind,
        capabilities=sorted(target.capabilities),
        context_window=target.context_window,
        input_price_per_mtok=target.input_price_per_mtok,
        output_price_per_mtok=target.output_price_per_mtok,
        quality=dict(target.quality),
        region=target.region,
        weight=target.weight,
        max_concurrency=target.max_concurrency,
        fallbacks=list(target.fallbacks),
        circuit=stats.circuit,
        in_flight=stats.in_flight,
        queue_depth=stats.queue_depth,
        ewma_latency_ms=stats.ewma_latency_ms,
        ewma_ttft_ms=stats.ewma_ttft_ms,
        tokens_per_s=stats.tokens_per_s,
        successes=stats.successes,
        failures=stats.failures,
        last_error=health.last_error,
        probe_ok=health.probe_ok,
    )


@router.get("/targets", response_model=TargetList, summary="Targets with health and load")
async def list_targets(routing: Annotated[Router, Depends(get_router)]) -> TargetList:
    return TargetList(data=[_state(routing, target) for target in routing.catalogue])


@router.post(
    "/targets/{target_id:path}/circuit",
    response_model=TargetState,
    summary="Force a target's circuit open (drain) or closed",
    dependencies=[Depends(require("admin"))],
)
async def set_circuit(
    target_id: str,
    body: CircuitChange,
    request: Request,
    routing: Annotated[Router, Depends(get_router)],
) -> TargetState:
    target = routing.catalogue.target(target_id)
    if target is None:
        raise NotFoundError(
            f"There is no target '{target_id}'.", param="target_id", code="target_not_found"
        )
    before = routing.health.circuit(target.id)
    routing.health.force(target, body.state)
    await audit(
        request,
        "router.circuit",
        "target",
        target.id,
        before={"circuit": before},
        after={"circuit": body.state},
    )
    return _state(routing, target)


@router.get("/groups", response_model=GroupList, summary="Virtual models and their strategies")
async def list_groups(routing: Annotated[Router, Depends(get_router)]) -> GroupList:
    return GroupList(
        data=[
            GroupState(
                name=group.name,
                strategy=group.strategy,
                options=dict(group.options),
                affinity=group.affinity,
                targets=[t.id for t in group.targets],
            )
            for group in routing.catalogue.groups.values()
        ]
    )


@router.post(
    "/feedback",
    response_model=FeedbackAccepted,
    summary="Rate a reply; the adaptive strategy learns from it",
    dependencies=[Depends(require("developer"))],
)
async def post_feedback(
    body: Feedback, routing: Annotated[Router, Depends(get_router)]
) -> FeedbackAccepted:
    target = routing.feedback(body.request_id, body.score)
    if target is None:
        raise NotFoundError(
            f"No recent routed request has the id '{body.request_id}'.",
            param="request_id",
            code="request_not_found",
        )
    return FeedbackAccepted(request_id=body.request_id, target=target)
