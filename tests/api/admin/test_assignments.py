"""POST /api/v1/router/assign and GET /api/v1/router/assignments, through ASGI, on SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from helixflow.api.admin.assignments import router
from helixflow.config import ModelConfig, Settings
from helixflow.router import assignment
from helixflow.router.catalogue import Catalogue
from helixflow.routing_config import ProviderConfig, ProviderModelConfig
from helixflow.store.database import Database
from helixflow.store.schema import AgentModelAssignment, Model, Provider
from tests.api.admin.harness import admin_app, asgi_client

ASSIGN = "/api/v1/router/assign"
LIST = "/api/v1/router/assignments"


class FakeRouter:
    """The router as the endpoint sees it: a catalogue, assignments, observed latencies."""

    def __init__(self, catalogue: Catalogue, latency: Mapping[str, float] | None = None) -> None:
        self.catalogue = catalogue
        self.latency = dict(latency or {})
        self.assigned: list[dict[str, str]] = []

    async def set_assignments(self, mapping: dict[str, str]) -> None:
        self.assigned.append(dict(mapping))

    def latency_ms(self) -> dict[str, float]:
        return dict(self.latency)


@pytest.fixture
def settings(clean_env: None) -> Settings:
    return Settings(
        models=[
            ModelConfig(
                id="tiny",
                path=Path("/models/tiny.gguf"),
                parallel=2,
                quality={"general": 0.4, "code": 0.6},
            )
        ],
        providers=[
            ProviderConfig(
                name="acme",
                base_url="http://127.0.0.1:9000/v1",
                api_key_env="ACME_API_KEY",
                region="eu",
                models=[
                    ProviderModelConfig(name="gpt-4o-mini", quality={"general": 0.8}),
                    ProviderModelConfig(
                        name="vision-pro",
                        capabilities=["chat", "vision"],
                        quality={"general": 0.9},
                        input_price_per_mtok=5.0,
                        output_price_per_mtok=15.0,
                        max_concurrency=1,
                    ),
                ],
            )
        ],
    )


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the ``database`` fixture migrates it."""
    return f"sqlite:///{tmp_path / 'helixflow.db'}"


@pytest.fixture
def host(settings: Settings) -> FakeRouter:
    return FakeRouter(Catalogue.from_settings(settings))


@pytest.fixture
def app(settings: Settings, database: Database, host: FakeRouter) -> FastAPI:
    app = admin_app(router, database)
    app.state.settings = settings
    app.state.router = host
    return app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as http:
        yield http


async def post_ok(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(ASSIGN, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def count(database: Database, table: Any) -> int:
    async with database.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


AGENTS = [
    {"name": "coder", "capabilities": ["tools"], "category": "code"},
    {"name": "viewer", "capabilities": ["vision"]},
    {"name": "writer"},
]


async def test_assign_solves_stores_and_applies(
    client: httpx.AsyncClient, database: Database, host: FakeRouter
) -> None:
    body = await post_ok(client, {"agents": AGENTS})

    assert body["solver"] == "hungarian"
    assert body["dry_run"] is False
    placed = {a["agent"]: (a["target"], a["score"]) for a in body["assignments"]}
    # vision-pro (0.9) takes one agent (max_concurrency 1): the viewer, who needs vision; the
    # writer goes to gpt-4o-mini (0.8 against tiny's 0.4), as does the coder (0.8 against 0.6).
    assert placed == {
        "coder": ("acme/gpt-4o-mini", 0.8),
        "viewer": ("acme/vision-pro", 0.9),
        "writer": ("acme/gpt-4o-mini", 0.8),
    }
    assert body["unassigned"] == []
    assert body["total_score"] == pytest.approx(0.8 + 0.9 + 0.8)

    # Applied to the router, and stored.
    mapping = {agent: target for agent, (target, _) in placed.items()}
    assert host.assigned == [mapping]
    listed = (await client.get(LIST)).json()
    assert listed["object"] == "list"
    assert {(r["agent"], r["target"], r["active"]) for r in listed["data"]} == {
        (agent, target, True) for agent, target in mapping.items()
    }
    # The whole catalogue was synced, not only the targets chosen.
    assert await count(database, Model.__table__) == 3
    assert await count(database, Provider.__table__) == 1


async def test_agents_that_fit_nowhere_are_listed_with_the_reason(
    client: httpx.AsyncClient, host: FakeRouter
) -> None:
    body = await post_ok(
        client,
        {
            "agents": [
                {"name": "thinker", "capabilities": ["reasoning"]},
                {"name": "seer-1", "capabilities": ["vision"]},
                {"name": "seer-2", "capabilities": ["vision"]},
                {"name": "us-only", "regions": ["us"]},
            ]
        },
    )
    reasons = {u["agent"]: u["reason"] for u in body["unassigned"]}
    assert reasons.pop("thinker") == "no model offers reasoning"
    # tiny has no region; acme is in eu.
    assert reasons.pop("us-only") == "no model with chat in region us"
    assert list(reasons.values()) == ["capacity exhausted"]  # vision-pro takes one agent
    assert [a["target"] for a in body["assignments"]] == ["acme/vision-pro"]
    assert host.assigned == [{body["assignments"][0]["agent"]: "acme/vision-pro"}]


async def test_dry_run_stores_and_applies_nothing(
    client: httpx.AsyncClient, database: Database, host: FakeRouter
) -> None:
    body = await post_ok(client, {"agents": AGENTS, "dry_run": True})
    assert body["dry_run"] is True
    assert len(body["assignments"]) == 3
    assert host.assigned == []
    assert await count(database, AgentModelAssignment.__table__) == 0
    assert await count(database, Model.__table__) == 0
    assert (await client.get(LIST)).json()["data"] == []


async def test_dry_run_needs_no_database(app: FastAPI, client: httpx.AsyncClient) -> None:
    app.state.database = None
    assert (await post_ok(client, {"agents": AGENTS, "dry_run": True}))["assignments"]
    response = await client.post(ASSIGN, json={"agents": AGENTS})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert (await client.get(LIST)).status_code == 503


async def test_reassigning_keeps_history_and_applies_the_full_map(
    client: httpx.AsyncClient, host: FakeRouter
) -> None:
    await post_ok(client, {"agents": AGENTS})
    # Restricted to the local model: the coder moves there; the others keep theirs.
    body = await post_ok(client, {"agents": [AGENTS[0]], "targets": ["tiny"]})
    assert body["assignments"] == [{"agent": "coder", "target": "local/tiny", "score": 0.6}]
    assert host.assigned[-1] == {
        "coder": "local/tiny",
        "viewer": "acme/vision-pro",
        "writer": "acme/gpt-4o-mini",
    }
    active = (await client.get(LIST)).json()["data"]
    assert [(r["agent"], r["target"]) for r in active] == [
        ("coder", "local/tiny"),
        ("viewer", "acme/vision-pro"),
        ("writer", "acme/gpt-4o-mini"),
    ]
    history = (await client.get(LIST, params={"include_inactive": "true"})).json()["data"]
    assert [(r["agent"], r["target"], r["active"]) for r in history if r["agent"] == "coder"] == [
        ("coder", "local/tiny", True),
        ("coder", "acme/gpt-4o-mini", False),
    ]


async def test_targets_may_name_models_targets_and_groups(client: httpx.AsyncClient) -> None:
    agents = [{"name": f"a{i}"} for i in range(3)]
    body = await post_ok(
        client, {"agents": agents, "targets": ["acme/gpt-4o-mini"], "dry_run": True}
    )
    assert {a["target"] for a in body["assignments"]} == {"acme/gpt-4o-mini"}
    body = await post_ok(client, {"agents": agents, "targets": ["auto"], "dry_run": True})
    assert len(body["assignments"]) == 3


async def test_capacity_and_cost_shape_the_assignment(client: httpx.AsyncClient) -> None:
    agents = [{"name": f"a{i}"} for i in range(3)]
    body = await post_ok(
        client,
        {"agents": agents, "capacity": {"acme/gpt-4o-mini": 1, "acme/vision-pro": 1}},
    )
    assert sorted(a["target"] for a in body["assignments"]) == [
        "acme/gpt-4o-mini",
        "acme/vision-pro",
        "local/tiny",
    ]
    # Price matters to a thrifty agent: vision-pro is the dearest, so it scores 0.9 - 1.
    thrifty = [{"name": "thrifty", "cost_weight": 1.0}]
    body = await post_ok(client, {"agents": thrifty, "dry_run": True})
    assert body["assignments"][0]["target"] == "acme/gpt-4o-mini"
    ceiling = [{"name": "capped", "max_price_per_mtok": 1.0}]
    body = await post_ok(client, {"agents": ceiling, "targets": ["vision-pro"], "dry_run": True})
    assert body["unassigned"][0]["reason"].startswith("no model within the price ceiling")


async def test_the_routers_latencies_count(client: httpx.AsyncClient, host: FakeRouter) -> None:
    host.latency = {"acme/gpt-4o-mini": 2000.0, "local/tiny": 100.0}
    agent = {"name": "hasty", "quality_weight": 0.0, "latency_weight": 1.0}
    body = await post_ok(
        client, {"agents": [agent], "targets": ["gpt-4o-mini", "tiny"], "dry_run": True}
    )
    assert body["assignments"] == [{"agent": "hasty", "target": "local/tiny", "score": 0.0}]


# --- refusals --------------------------------------------------------------------------------


def agents_with(**fields: Any) -> list[dict[str, Any]]:
    return [{"name": "a", **fields}]


BAD_BODIES: list[tuple[str, Any, int, str | None, str | None]] = [
    # (id, body, status, param, code)
    ("no-agents", {"agents": []}, 400, "agents", "too_short"),
    ("agents-missing", {}, 400, "agents", "missing"),
    ("too-many", {"agents": [{"name": f"a{i}"} for i in range(1001)]}, 400, "agents", "too_long"),
    (
        "name-pattern",
        {"agents": [{"name": "has space"}]},
        400,
        "agents[0].name",
        "string_pattern_mismatch",
    ),
    ("name-empty", {"agents": [{"name": ""}]}, 400, "agents[0].name", "string_too_short"),
    ("name-long", {"agents": [{"name": "a" * 129}]}, 400, "agents[0].name", "string_too_long"),
    (
        "duplicate",
        {"agents": [{"name": "a"}, {"name": "b"}, {"name": "a"}]},
        400,
        "agents[2].name",
        "duplicate_agent",
    ),
    (
        "capability",
        {"agents": agents_with(capabilities=["chat", "telepathy"])},
        400,
        "agents[0].capabilities[1]",
        "literal_error",
    ),
    (
        "weight",
        {"agents": agents_with(cost_weight=-1)},
        400,
        "agents[0].cost_weight",
        "greater_than_equal",
    ),
    (
        "weight-huge",
        {"agents": agents_with(quality_weight=1e9)},
        400,
        "agents[0].quality_weight",
        "less_than_equal",
    ),
    (
        "price",
        {"agents": agents_with(max_price_per_mtok=-0.5)},
        400,
        "agents[0].max_price_per_mtok",
        "greater_than_equal",
    ),
    ("regions-empty", {"agents": agents_with(regions=[])}, 400, "agents[0].regions", "too_short"),
    (
        "region-empty",
        {"agents": agents_with(regions=["eu", ""])},
        400,
        "agents[0].regions[1]",
        "string_too_short",
    ),
    (
        "unknown-field",
        {"agents": agents_with(capabilties=["tools"])},
        400,
        "agents[0].capabilties",
        "extra_forbidden",
    ),
    ("targets-empty", {"agents": agents_with(), "targets": []}, 400, "targets", "too_short"),
    (
        "unknown-target",
        {"agents": agents_with(), "targets": ["tiny", "nope"]},
        404,
        "targets[1]",
        "model_not_found",
    ),
    (
        "capacity-zero",
        {"agents": agents_with(), "capacity": {"local/tiny": 0}},
        400,
        "capacity.local/tiny",
        "greater_than_equal",
    ),
    (
        "capacity-unknown",
        {"agents": agents_with(), "capacity": {"nope/x": 1}},
        404,
        "capacity",
        "model_not_found",
    ),
    (
        "capacity-not-selected",
        {"agents": agents_with(), "targets": ["tiny"], "capacity": {"acme/gpt-4o-mini": 1}},
        400,
        "capacity",
        "target_not_selected",
    ),
    ("dry-run", {"agents": agents_with(), "dry_run": "maybe"}, 400, "dry_run", "bool_parsing"),
    ("not-an-object", [{"name": "a"}], 400, None, None),
]


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
async def test_bad_requests_are_refused(
    client: httpx.AsyncClient,
    database: Database,
    host: FakeRouter,
    body: Any,
    status: int,
    param: str | None,
    code: str | None,
) -> None:
    response = await client.post(ASSIGN, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert host.assigned == []
    assert await count(database, AgentModelAssignment.__table__) == 0


async def test_an_unknown_capability_is_answered_with_the_known_ones(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(ASSIGN, json={"agents": agents_with(capabilities=["telepathy"])})
    message = response.json()["error"]["message"]
    assert message.startswith("Invalid value for 'agents[0].capabilities[0]'")
    assert "'tools'" in message
    assert "'reasoning'" in message


async def test_non_finite_numbers_are_refused(client: httpx.AsyncClient) -> None:
    # Python's JSON parser reads NaN and Infinity; they must not reach the solver.
    for value in ("NaN", "Infinity"):
        response = await client.post(
            ASSIGN,
            content=f'{{"agents": [{{"name": "a", "latency_weight": {value}}}]}}',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "agents[0].latency_weight"


async def test_a_bad_query_parameter_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get(LIST, params={"include_inactive": "maybe"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "include_inactive"


async def test_a_problem_too_large_for_the_solver_is_refused(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assignment, "MAX_CELLS", 4)
    response = await client.post(ASSIGN, json={"agents": [{"name": "a"}, {"name": "b"}]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "assignment_too_large"


async def test_without_a_router_the_endpoint_is_unavailable(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    app.state.router = None
    response = await client.post(ASSIGN, json={"agents": AGENTS})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
