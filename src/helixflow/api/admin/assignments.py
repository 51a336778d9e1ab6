"""Agent-to-model assignment: ``POST /api/v1/router/assign`` and ``GET .../assignments``.

Agents declare the capabilities they need and how they weigh quality, cost and latency; the
solver (``router/assignment.py``) places each on a target under the targets' capacities,
maximizing the total score. Unless ``dry_run``, the catalogue is synced to the ``models`` and
``providers`` tables, the assignment is stored in ``agent_model_assignments`` (the agents'
earlier rows deactivated) and handed to the router, so that requests carrying ``X-Agent-Id``
follow it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from helixflow.api.audit import audit
from helixflow.api.auth import require
from helixflow.errors import InvalidRequestError, ModelNotFoundError, ServiceUnavailableError
from helixflow.router.assignment import (
    AgentSpec,
    Assignment,
    AssignmentHost,
    AssignmentTooLargeError,
    LatencySource,
    solve,
)
from helixflow.router.catalogue import DEFAULT_CATEGORY, Catalogue, Target
from helixflow.routing_config import Capability
from helixflow.store.database import Database
from helixflow.store.repositories.agents import AgentRepository
from helixflow.store.repositories.catalogue import CatalogueRepository

router = APIRouter(prefix="/api/v1/router", tags=["router"])

MAX_AGENTS = 1000
MAX_WEIGHT = 1000.0
AGENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$"
"""What ``X-Agent-Id`` may carry: letters, digits and ``. _ : @ / -``, not first."""


# --- requests --------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Weight = Annotated[float, Field(ge=0, le=MAX_WEIGHT, allow_inf_nan=False)]
Region = Annotated[str, Field(min_length=1, max_length=64)]


def _default_capabilities() -> list[Capability]:
    return ["chat"]


class AgentIn(_Body):
    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=AGENT_NAME_PATTERN,
        description="The agent's id, as its requests send it in `X-Agent-Id`.",
    )
    capabilities: list[Capability] = Field(
        default_factory=_default_capabilities,
        max_length=32,
        description="Every one is required: chat, completions, tools, json, embeddings, "
        "vision, code, reasoning. Default: chat.",
    )
    category: str = Field(
        default=DEFAULT_CATEGORY,
        min_length=1,
        max_length=64,
        description="Task category whose quality score counts (`general` when a model has "
        "no score for it).",
    )
    quality_weight: Weight = 1.0
    cost_weight: Weight = Field(
        default=0.0, description="Weight of the blended price (3 input : 1 output tokens)."
    )
    latency_weight: Weight = Field(
        default=0.0, description="Weight of the latency the router observed."
    )
    regions: list[Region] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Regions the agent's requests may go to; default any.",
    )
    max_price_per_mtok: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Highest blended price (USD per 1M tokens, 3 input : 1 output) allowed.",
    )

    def spec(self) -> AgentSpec:
        return AgentSpec(
            name=self.name,
            capabilities=frozenset(self.capabilities),
            category=self.category,
            quality_weight=self.quality_weight,
            cost_weight=self.cost_weight,
            latency_weight=self.latency_weight,
            regions=None if self.regions is None else frozenset(self.regions),
            max_price_per_mtok=self.max_price_per_mtok,
        )


class AssignRequest(_Body):
    agents: list[AgentIn] = Field(min_length=1, max_length=MAX_AGENTS)
    targets: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_AGENTS,
        description="Only these targets (`provider/model`), models or groups; default every "
        "target.",
    )
    capacity: dict[str, Annotated[int, Field(ge=1, le=1_000_000)]] | None = Field(
        default=None,
        description="Agents a target (by id) may take; default its max_concurrency, else "
        "unlimited.",
    )
    dry_run: bool = Field(default=False, description="Solve only: store and apply nothing.")

    @model_validator(mode="after")
    def _unique_names(self) -> AssignRequest:
        seen: set[str] = set()
        for i, agent in enumerate(self.agents):
            if agent.name in seen:
                raise PydanticCustomError(
                    "duplicate_agent",
                    "agent names must be unique; '{name}' appears more than once",
                    {"param": f"agents[{i}].name", "name": agent.name},
                )
            seen.add(agent.name)
        return self


# --- responses -------------------------------------------------------------------------------


class AssignmentItem(BaseModel):
    agent: str
    target: str = Field(description="The target id, `provider/model` (`local/<model>`).")
    score: float


class UnassignedItem(BaseModel):
    agent: str
    reason: str = Field(description="e.g. `no model offers tools`, `capacity exhausted`.")


class AssignResponse(BaseModel):
    assignments: list[AssignmentItem]
    unassigned: list[UnassignedItem]
    total_score: float
    solver: Literal["hungarian"] = "hungarian"
    dry_run: bool


class AssignmentRecordItem(BaseModel):
    agent: str
    target: str
    score: float
    assigned_at: datetime
    active: bool


class AssignmentListResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[AssignmentRecordItem]


# --- helpers ---------------------------------------------------------------------------------


def _host(request: Request) -> AssignmentHost:
    host = getattr(request.app.state, "router", None)
    if host is None or not isinstance(host, AssignmentHost):
        raise ServiceUnavailableError("The router is not running, so agents cannot be assigned.")
    return host


def _database(request: Request) -> Database:
    database = getattr(request.app.state, "database", None)
    if database is None:
        raise ServiceUnavailableError(
            "Storing assignments needs a database, and none is configured (use dry_run)."
        )
    return cast(Database, database)


def _targets(catalogue: Catalogue, names: Sequence[str] | None) -> list[Target]:
    if names is None:
        return list(catalogue)
    chosen: dict[str, Target] = {}
    for i, name in enumerate(names):
        try:
            selection = catalogue.resolve(name)
        except ModelNotFoundError:
            raise ModelNotFoundError(name, param=f"targets[{i}]") from None
        for target in selection.candidates:
            chosen.setdefault(target.id, target)
    return list(chosen.values())


def _capacity(
    catalogue: Catalogue, targets: Sequence[Target], capacity: Mapping[str, int] | None
) -> dict[str, int]:
    if capacity is None:
        return {}
    ids = {t.id for t in targets}
    for key in capacity:
        if key in ids:
            continue
        if catalogue.target(key) is None:
            raise ModelNotFoundError(key, param="capacity")
        raise InvalidRequestError(
            f"capacity names '{key}', which is not among the targets to choose from.",
            param="capacity",
            code="target_not_selected",
        )
    return dict(capacity)


def _latency(host: AssignmentHost) -> dict[str, float] | None:
    if isinstance(host, LatencySource):
        return host.latency_ms()
    return None


def _response(result: Assignment, dry_run: bool) -> AssignResponse:
    return AssignResponse(
        assignments=[
            AssignmentItem(agent=p.agent, target=p.target, score=p.score) for p in result.placements
        ],
        unassigned=[UnassignedItem(agent=u.agent, reason=u.reason) for u in result.unassigned],
        total_score=result.total_score,
        dry_run=dry_run,
    )


# --- endpoints -------------------------------------------------------------------------------


@router.post("/assign", response_model=AssignResponse, dependencies=[Depends(require("admin"))])
async def assign(body: AssignRequest, request: Request) -> AssignResponse:
    """Place each agent on a target maximizing the total score under the targets' capacity
    (the Hungarian algorithm; agents that fit nowhere are listed with the reason)."""
    host = _host(request)
    database = None if body.dry_run else _database(request)
    catalogue = host.catalogue
    targets = _targets(catalogue, body.targets)
    capacity = _capacity(catalogue, targets, body.capacity)
    agents = [a.spec() for a in body.agents]
    latency = _latency(host)
    try:
        result = await asyncio.to_thread(solve, agents, targets, capacity, latency)
    except AssignmentTooLargeError as exc:
        raise InvalidRequestError(
            f"{exc}.", param="capacity", code="assignment_too_large"
        ) from None
    if database is not None:
        settings: Any = getattr(request.app.state, "settings", None)
        providers = list(settings.providers) if settings is not None else []
        ids = await CatalogueRepository(database).sync(providers, catalogue)
        agents_repository = AgentRepository(database)
        await agents_repository.save_assignment(
            agents, [(p.agent, ids[p.target], p.score) for p in result.placements]
        )
        before = dict(host.assignments) if hasattr(host, "assignments") else None
        await host.set_assignments(await agents_repository.active_assignments())
        await audit(
            request,
            "router.assign",
            "agents",
            None,
            before={"assignments": before} if before is not None else None,
            after={"assignments": result.mapping(), "total_score": result.total_score},
        )
    return _response(result, body.dry_run)


@router.get("/assignments", response_model=AssignmentListResponse)
async def list_assignments(
    request: Request,
    include_inactive: Annotated[
        bool, Query(description="Also the earlier assignments (history), newest first.")
    ] = False,
) -> AssignmentListResponse:
    """The agents' assignments: the active one of each agent, by agent name."""
    records = await AgentRepository(_database(request)).list_assignments(
        active_only=not include_inactive
    )
    return AssignmentListResponse(
        data=[
            AssignmentRecordItem(
                agent=r.agent,
                target=r.target,
                score=r.score,
                assigned_at=r.assigned_at,
                active=r.active,
            )
            for r in records
        ]
    )
