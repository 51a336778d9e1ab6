"""Agent-to-model assignment: which target each declared agent should use.

Each agent declares the capabilities it needs, where its requests may go (regions, a price
ceiling) and how it weighs quality, cost and latency. :func:`score_matrix` scores every
(agent, target) pair and marks the infeasible ones; :func:`solve` finds the assignment that

1. places as many agents as possible on a feasible target, then
2. maximizes the total score of the placed agents,

without giving any target more agents than its capacity. It runs the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on the score matrix with each target's column
repeated once per unit of capacity. Infeasible pairs enter the solver at a sentinel score low
enough that using one always costs more than any gain in score elsewhere, and are dropped from
the result: the solver's optimum is then exactly the two-level objective above.

A pair's score is ``quality_weight * quality(category) - cost_weight * price
- latency_weight * latency``, where price (blended, see :func:`blended_price`) and latency are
min-max normalized into [0, 1] over the targets considered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from helixflow.router.catalogue import DEFAULT_CATEGORY, Catalogue, Target

INFEASIBLE = float("-inf")
"""The score of a pair :func:`solve` never assigns."""

CAPACITY_EXHAUSTED = "capacity exhausted"
"""The reason given for a feasible agent left out because its targets were full."""

MAX_CELLS = 16_000_000
"""Largest agents x target slots matrix :func:`solve` builds (128 MB of scores)."""

ScoreMatrix = npt.NDArray[np.float64]


class AssignmentTooLargeError(ValueError):
    """The expanded problem would exceed :data:`MAX_CELLS`."""


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """What an agent needs from a model and how it ranks the ones that qualify."""

    name: str
    capabilities: frozenset[str] = frozenset()
    """Every one of these is required (``tools``, ``json``, ``vision``...)."""
    category: str = DEFAULT_CATEGORY
    """Task category whose quality score counts (``general``, ``code``...)."""
    quality_weight: float = 1.0
    cost_weight: float = 0.0
    latency_weight: float = 0.0
    regions: frozenset[str] | None = None
    """Regions allowed; None: any (a target without a region only qualifies when None)."""
    max_price_per_mtok: float | None = None
    """Ceiling on the target's blended price in USD per 1M tokens; None: no ceiling."""


@dataclass(frozen=True, slots=True)
class Placement:
    agent: str
    target: str
    """The target's id (``<provider>/<model>``)."""
    score: float


@dataclass(frozen=True, slots=True)
class Unplaced:
    agent: str
    reason: str


@dataclass(frozen=True, slots=True)
class Assignment:
    """The solver's answer: placements in the agents' order, and the agents left out."""

    placements: tuple[Placement, ...]
    unassigned: tuple[Unplaced, ...]

    @property
    def total_score(self) -> float:
        return float(sum(p.score for p in self.placements))

    def mapping(self) -> dict[str, str]:
        """Agent name -> target id."""
        return {p.agent: p.target for p in self.placements}


@runtime_checkable
class AssignmentHost(Protocol):
    """What the assignment endpoint needs from the router on ``app.state.router``."""

    @property
    def catalogue(self) -> Catalogue: ...

    async def set_assignments(self, mapping: dict[str, str]) -> None:
        """Replace the agent name -> target id map that requests with ``X-Agent-Id`` follow."""
        ...


@runtime_checkable
class LatencySource(Protocol):
    """Optional on the host: the latency it observed per target id (smoothed, in ms)."""

    def latency_ms(self) -> dict[str, float]: ...


def blended_price(target: Target) -> float:
    """USD per 1M tokens for a 3:1 mix of input and output tokens (a typical chat request)."""
    return (3.0 * target.input_price_per_mtok + target.output_price_per_mtok) / 4.0


def _normalized(values: Sequence[float]) -> npt.NDArray[np.float64]:
    """Min-max into [0, 1]; all zeros when the values do not differ."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return array
    low, high = float(array.min()), float(array.max())
    if not high > low:
        return np.zeros_like(array)
    return (array - low) / (high - low)


def _latencies(
    targets: Sequence[Target], latency_ms: Mapping[str, float] | None
) -> npt.NDArray[np.float64]:
    """Normalized latency per target; a target not measured counts as the measured mean."""
    known = {
        t.id: float(latency_ms[t.id])
        for t in targets
        if latency_ms is not None
        and t.id in latency_ms
        and np.isfinite(latency_ms[t.id])
        and latency_ms[t.id] >= 0
    }
    if not known:
        return np.zeros(len(targets), dtype=np.float64)
    mean = sum(known.values()) / len(known)
    return _normalized([known.get(t.id, mean) for t in targets])


def feasible(agent: AgentSpec, target: Target) -> bool:
    """Whether ``target`` offers what ``agent`` requires."""
    if not agent.capabilities <= target.capabilities:
        return False
    if agent.regions is not None and target.region not in agent.regions:
        return False
    return agent.max_price_per_mtok is None or blended_price(target) <= agent.max_price_per_mtok


def score_matrix(
    agents: Sequence[AgentSpec],
    targets: Sequence[Target],
    latency_ms: Mapping[str, float] | None = None,
) -> ScoreMatrix:
    """Scores, one row per agent and one column per target; :data:`INFEASIBLE` (``-inf``)
    where the target lacks a required capability, lies outside the agent's regions or costs
    more than its ceiling."""
    scores = np.full((len(agents), len(targets)), INFEASIBLE, dtype=np.float64)
    if not agents or not targets:
        return scores
    price = _normalized([blended_price(t) for t in targets])
    latency = _latencies(targets, latency_ms)
    for i, agent in enumerate(agents):
        for j, target in enumerate(targets):
            if feasible(agent, target):
                scores[i, j] = (
                    agent.quality_weight * target.score(agent.category)
                    - agent.cost_weight * price[j]
                    - agent.latency_weight * latency[j]
                )
    return scores


def infeasibility_reason(agent: AgentSpec, targets: Sequence[Target]) -> str:
    """Why no target qualifies for ``agent`` (say it the way an operator would fix it)."""
    if not targets:
        return "no model to choose from"
    offered = frozenset().union(*(t.capabilities for t in targets))
    missing = sorted(agent.capabilities - offered)
    if missing:
        return f"no model offers {', '.join(missing)}"
    capable = [t for t in targets if agent.capabilities <= t.capabilities]
    if not capable:
        return f"no model offers all of {', '.join(sorted(agent.capabilities))}"
    if agent.regions is not None:
        in_region = [t for t in capable if t.region in agent.regions]
        if not in_region:
            what = f" with {', '.join(sorted(agent.capabilities))}" if agent.capabilities else ""
            return f"no model{what} in region {', '.join(sorted(agent.regions)) or '(none)'}"
    if agent.max_price_per_mtok is None:
        return "no suitable model"
    return f"no model within the price ceiling of {agent.max_price_per_mtok:g} USD per 1M tokens"


def default_capacity(target: Target, agents: int) -> int:
    """A target's capacity when none is given: its max concurrency, else every agent."""
    return target.max_concurrency if target.max_concurrency is not None else agents


def solve(
    agents: Sequence[AgentSpec],
    targets: Sequence[Target],
    capacity: Mapping[str, int] | None = None,
    latency_ms: Mapping[str, float] | None = None,
    *,
    scores: ScoreMatrix | None = None,
) -> Assignment:
    """The assignment placing the most agents, with the highest total score among those.

    ``capacity`` maps target ids to how many agents each may take (targets not named take
    :func:`default_capacity`). ``scores`` may pass a matrix already computed by
    :func:`score_matrix` for these agents and targets.
    """
    _check_unique([a.name for a in agents], "agent")
    _check_unique([t.id for t in targets], "target")
    capacity = dict(capacity or {})
    ids = {t.id for t in targets}
    for target_id, amount in capacity.items():
        if target_id not in ids:
            raise ValueError(f"capacity names {target_id!r}, which is not among the targets")
        if amount < 0:
            raise ValueError(f"capacity of {target_id!r} is negative ({amount})")
    if scores is None:
        scores = score_matrix(agents, targets, latency_ms)
    elif scores.shape != (len(agents), len(targets)):
        raise ValueError(f"scores have shape {scores.shape}, not {(len(agents), len(targets))}")
    if not agents:
        return Assignment((), ())

    allowed = np.isfinite(scores)
    # Columns: each target repeated as often as it can take agents, but no more often than
    # there are agents it could take (more copies could never be used).
    columns: list[int] = []
    for j, target in enumerate(targets):
        amount = capacity.get(target.id, default_capacity(target, len(agents)))
        columns.extend([j] * min(amount, int(allowed[:, j].sum())))

    if len(agents) * len(columns) > MAX_CELLS:
        raise AssignmentTooLargeError(
            f"{len(agents)} agents over {len(columns)} target slots is more than the solver "
            f"takes ({MAX_CELLS:,} pairs): give targets a smaller capacity or fewer targets"
        )
    placements: dict[int, Placement] = {}
    if columns:
        magnitude = float(np.abs(scores[allowed]).max()) if allowed.any() else 0.0
        # Any two assignments' feasible totals differ by at most 2 * rows * magnitude, so one
        # infeasible pair more always costs more than any score gained: the solver first
        # minimizes the infeasible pairs it must use (it fills min(rows, columns) pairs),
        # that is, maximizes the agents placed.
        sentinel = -(2.0 * len(agents) * magnitude + 1.0)
        # One rows x slots matrix, negated in place: the solver minimizes.
        costs = np.where(allowed, scores, sentinel)[:, columns]
        np.negative(costs, out=costs)
        rows, cols = linear_sum_assignment(costs)
        del costs
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            j = columns[col]
            if allowed[row, j]:
                placements[row] = Placement(agents[row].name, targets[j].id, float(scores[row, j]))

    unassigned = tuple(
        Unplaced(
            agent.name,
            CAPACITY_EXHAUSTED if allowed[i].any() else infeasibility_reason(agent, targets),
        )
        for i, agent in enumerate(agents)
        if i not in placements
    )
    return Assignment(tuple(placements[i] for i in sorted(placements)), unassigned)


def _check_unique(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name!r} appears twice")
        seen.add(name)
