"""``agents`` and ``agent_model_assignments``: declared agents and the model each is assigned.

An assignment is history: a new solve deactivates an agent's active row and inserts a new one,
so at most one row per agent is active and past assignments stay queryable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from helixflow.router.assignment import AgentSpec
from helixflow.store.database import Database
from helixflow.store.schema import Agent, AgentModelAssignment, Model, table_of, utcnow

_AGENTS = table_of(Agent)
_ASSIGNMENTS = table_of(AgentModelAssignment)
_MODELS = table_of(Model)
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class AssignmentRecord:
    """One row of ``agent_model_assignments``, with the agent's and model's names."""

    agent: str
    target: str
    """The model row's name: the target id."""
    model_id: int
    score: float
    assigned_at: datetime
    active: bool


def agent_row(agent: AgentSpec) -> dict[str, Any]:
    return {
        "name": agent.name,
        "capabilities": sorted(agent.capabilities),
        "preferences": {
            "category": agent.category,
            "quality_weight": agent.quality_weight,
            "cost_weight": agent.cost_weight,
            "latency_weight": agent.latency_weight,
            "regions": None if agent.regions is None else sorted(agent.regions),
            "max_price_per_mtok": agent.max_price_per_mtok,
        },
    }


class AgentRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def save_assignment(
        self, agents: Sequence[AgentSpec], placed: Sequence[tuple[str, int, float]]
    ) -> None:
        """Record a solve, in one transaction: upsert ``agents`` (their capabilities and
        preferences), deactivate every active assignment of these agents, and insert
        ``placed`` (agent name, ``models`` row id, score) as the active ones. An agent of
        ``agents`` missing from ``placed`` is left without an active assignment."""
        names = {a.name for a in agents}
        if len(names) != len(agents):
            raise ValueError("agent names must be unique")
        placed_names = [name for name, _model_id, _score in placed]
        if len(set(placed_names)) != len(placed_names):
            raise ValueError("an agent is placed twice")
        for name in placed_names:
            if name not in names:
                raise ValueError(f"placed agent {name!r} is not among the agents")
        if not agents:
            return
        now = utcnow()
        # Sorted, so that concurrent saves lock the agents' rows in one order.
        rows = [agent_row(a) for a in sorted(agents, key=lambda a: a.name)]
        async with self.database.engine.begin() as conn:
            ids = await _upsert_agents(conn, rows, now)
            agent_ids = sorted(ids.values())
            for start in range(0, len(agent_ids), _CHUNK):
                await conn.execute(
                    update(_ASSIGNMENTS)
                    .where(
                        _ASSIGNMENTS.c.agent_id.in_(agent_ids[start : start + _CHUNK]),
                        _ASSIGNMENTS.c.active.is_(true()),
                    )
                    .values(active=False)
                )
            if placed:
                await conn.execute(
                    _ASSIGNMENTS.insert(),
                    [
                        {
                            "agent_id": ids[name],
                            "model_id": model_id,
                            "score": float(score),
                            "assigned_at": now,
                            "active": True,
                        }
                        for name, model_id, score in placed
                    ],
                )

    async def active_assignments(self) -> dict[str, str]:
        """Agent name -> target id (the model row's name) of every active assignment."""
        return {r.agent: r.target for r in await self.list_assignments(active_only=True)}

    async def list_assignments(self, active_only: bool = True) -> list[AssignmentRecord]:
        """Assignments by agent name, newest first within an agent."""
        stmt = (
            select(
                _AGENTS.c.name.label("agent"),
                _MODELS.c.name.label("target"),
                _ASSIGNMENTS.c.model_id,
                _ASSIGNMENTS.c.score,
                _ASSIGNMENTS.c.assigned_at,
                _ASSIGNMENTS.c.active,
            )
            .join(_AGENTS, _AGENTS.c.id == _ASSIGNMENTS.c.agent_id)
            .join(_MODELS, _MODELS.c.id == _ASSIGNMENTS.c.model_id)
            .order_by(_AGENTS.c.name, _ASSIGNMENTS.c.assigned_at.desc(), _ASSIGNMENTS.c.id.desc())
        )
        if active_only:
            stmt = stmt.where(_ASSIGNMENTS.c.active.is_(true()))
        async with self.database.engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        records = [
            AssignmentRecord(
                agent=row["agent"],
                target=row["target"],
                model_id=int(row["model_id"]),
                score=float(row["score"]),
                assigned_at=row["assigned_at"],
                active=bool(row["active"]),
            )
            for row in rows
        ]
        if not active_only:
            return records
        newest: dict[str, AssignmentRecord] = {}
        for record in records:  # one per agent, should an older active row have survived
            newest.setdefault(record.agent, record)
        return list(newest.values())


async def _upsert_agents(
    conn: AsyncConnection, rows: list[dict[str, Any]], now: datetime
) -> dict[str, int]:
    """Insert or update the agents' rows (updating takes their row locks); returns name -> id."""
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        module = postgresql if dialect == "postgresql" else sqlite
        stmt = module.insert(_AGENTS)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "capabilities": stmt.excluded.capabilities,
                "preferences": stmt.excluded.preferences,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        await conn.execute(stmt, [{**r, "created_at": now, "updated_at": now} for r in rows])
    ids = await _agent_ids(conn, [r["name"] for r in rows])
    if dialect not in ("postgresql", "sqlite"):
        for row in rows:
            if row["name"] in ids:
                await conn.execute(
                    update(_AGENTS)
                    .where(_AGENTS.c.id == ids[row["name"]])
                    .values(
                        capabilities=row["capabilities"],
                        preferences=row["preferences"],
                        updated_at=now,
                    )
                )
            else:
                await conn.execute(_AGENTS.insert().values(**row, created_at=now, updated_at=now))
        ids = await _agent_ids(conn, [r["name"] for r in rows])
    return ids


async def _agent_ids(conn: AsyncConnection, names: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for start in range(0, len(names), _CHUNK):
        result = await conn.execute(
            select(_AGENTS.c.name, _AGENTS.c.id).where(
                _AGENTS.c.name.in_(names[start : start + _CHUNK])
            )
        )
        out.update({name: int(id_) for name, id_ in result.all()})
    return out
