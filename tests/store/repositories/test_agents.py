"""AgentRepository on SQLite and PostgreSQL: agents' rows and their assignment history."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from helixflow.router.assignment import AgentSpec
from helixflow.router.catalogue import upstream_target
from helixflow.routing_config import ProviderConfig
from helixflow.store.database import Database
from helixflow.store.repositories.agents import AgentRepository
from helixflow.store.repositories.catalogue import CatalogueRepository
from helixflow.store.schema import Agent, AgentModelAssignment, table_of

PLANNER = AgentSpec(
    "planner",
    capabilities=frozenset({"tools", "json"}),
    category="code",
    quality_weight=2.0,
    cost_weight=0.5,
    regions=frozenset({"us", "eu"}),
    max_price_per_mtok=3.0,
)
WRITER = AgentSpec("writer")


async def model_ids(database: Database) -> dict[str, int]:
    provider = ProviderConfig(name="acme", base_url="http://127.0.0.1:9/v1", models=["a", "b"])
    targets = [upstream_target(provider, m) for m in provider.model_configs()]
    return await CatalogueRepository(database).sync([provider], targets)


async def all_rows(
    database: Database, model: type[Agent] | type[AgentModelAssignment]
) -> list[Any]:
    async with database.engine.connect() as conn:
        result = await conn.execute(select(table_of(model)).order_by(table_of(model).c.id))
        return [dict(row) for row in result.mappings().all()]


async def test_save_and_read_an_assignment(database: Database) -> None:
    ids = await model_ids(database)
    repository = AgentRepository(database)

    await repository.save_assignment(
        [PLANNER, WRITER], [("planner", ids["acme/a"], 1.5), ("writer", ids["acme/b"], 0.25)]
    )

    assert await repository.active_assignments() == {"planner": "acme/a", "writer": "acme/b"}
    agents = {row["name"]: row for row in await all_rows(database, Agent)}
    assert agents["planner"]["capabilities"] == ["json", "tools"]
    assert agents["planner"]["preferences"] == {
        "category": "code",
        "quality_weight": 2.0,
        "cost_weight": 0.5,
        "latency_weight": 0.0,
        "regions": ["eu", "us"],
        "max_price_per_mtok": 3.0,
    }
    assert agents["writer"]["preferences"]["regions"] is None
    records = await repository.list_assignments()
    assert [(r.agent, r.target, r.model_id, r.score, r.active) for r in records] == [
        ("planner", "acme/a", ids["acme/a"], 1.5, True),
        ("writer", "acme/b", ids["acme/b"], 0.25, True),
    ]


async def test_reassigning_deactivates_the_old_rows(database: Database) -> None:
    ids = await model_ids(database)
    repository = AgentRepository(database)
    await repository.save_assignment(
        [PLANNER, WRITER], [("planner", ids["acme/a"], 1.0), ("writer", ids["acme/a"], 0.5)]
    )

    changed = AgentSpec("planner", capabilities=frozenset({"chat"}))
    await repository.save_assignment([changed], [("planner", ids["acme/b"], 0.75)])

    # Only the planner moved; the writer, not in this solve, keeps its assignment.
    assert await repository.active_assignments() == {"planner": "acme/b", "writer": "acme/a"}
    rows = await all_rows(database, AgentModelAssignment)
    assert len(rows) == 3
    planner_id = next(a["id"] for a in await all_rows(database, Agent) if a["name"] == "planner")
    assert [(r["model_id"], r["active"]) for r in rows if r["agent_id"] == planner_id] == [
        (ids["acme/a"], False),
        (ids["acme/b"], True),
    ]
    history = await repository.list_assignments(active_only=False)
    assert [(r.agent, r.target, r.active) for r in history] == [
        ("planner", "acme/b", True),  # newest first
        ("planner", "acme/a", False),
        ("writer", "acme/a", True),
    ]
    # The agent's declaration was updated, not duplicated.
    agents = await all_rows(database, Agent)
    assert [(a["name"], a["capabilities"]) for a in agents] == [
        ("planner", ["chat"]),
        ("writer", []),
    ]


async def test_an_agent_left_unplaced_loses_its_assignment(database: Database) -> None:
    ids = await model_ids(database)
    repository = AgentRepository(database)
    await repository.save_assignment([PLANNER], [("planner", ids["acme/a"], 1.0)])

    await repository.save_assignment([PLANNER], [])

    assert await repository.active_assignments() == {}
    assert [r.active for r in await repository.list_assignments(active_only=False)] == [False]


async def test_the_same_solve_twice_keeps_one_active_row_per_agent(database: Database) -> None:
    ids = await model_ids(database)
    repository = AgentRepository(database)
    for _ in range(3):
        await repository.save_assignment([WRITER], [("writer", ids["acme/a"], 0.5)])
    rows = await all_rows(database, AgentModelAssignment)
    assert [r["active"] for r in rows] == [False, False, True]
    assert len(await repository.list_assignments()) == 1


@pytest.mark.parametrize(
    ("agents", "placed", "message"),
    [
        ([WRITER], [("planner", 1, 1.0)], "'planner' is not among the agents"),
        ([WRITER], [("writer", 1, 1.0), ("writer", 2, 1.0)], "placed twice"),
        ([WRITER, WRITER], [], "unique"),
    ],
)
async def test_bad_arguments_write_nothing(
    database: Database,
    agents: list[AgentSpec],
    placed: list[tuple[str, int, float]],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        await AgentRepository(database).save_assignment(agents, placed)
    assert await all_rows(database, Agent) == []
