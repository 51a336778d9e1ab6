"""Agent-to-model assignment: scores, feasibility, and the Hungarian solver against brute force."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helixflow.router.assignment import (
    CAPACITY_EXHAUSTED,
    AgentSpec,
    Assignment,
    blended_price,
    default_capacity,
    score_matrix,
    solve,
)
from helixflow.router.catalogue import Target
from tests.router import factories


def target(
    name: str,
    *,
    capabilities: Sequence[str] = ("chat", "tools"),
    quality: float | Mapping[str, float] = 0.5,
    price: tuple[float, float] = (0.0, 0.0),
    **fields: Any,
) -> Target:
    """``p/<name>``; ``quality``: a general score or scores per category; ``price``: (input,
    output) per million tokens."""
    scores = {"general": quality} if isinstance(quality, float | int) else dict(quality)
    return factories.target(
        f"p/{name}",
        capabilities=capabilities,
        input_price_per_mtok=price[0],
        output_price_per_mtok=price[1],
        quality=MappingProxyType(scores),
        **fields,
    )


# --- scores ----------------------------------------------------------------------------------


def test_scores_are_quality_for_the_category() -> None:
    targets = [target("a", quality={"general": 0.4, "code": 0.9}), target("b", quality=0.7)]
    agents = [AgentSpec("coder", category="code"), AgentSpec("chatter", quality_weight=2.0)]
    scores = score_matrix(agents, targets)
    assert scores.shape == (2, 2)
    # b has no `code` score: its `general` one counts.
    np.testing.assert_allclose(scores, [[0.9, 0.7], [0.8, 1.4]])


def test_infeasible_pairs_are_minus_infinity() -> None:
    targets = [
        target("plain", capabilities=["chat"]),
        target("eu", region="eu"),
        target("dear", price=(10.0, 30.0)),  # blended (3 * 10 + 30) / 4 = 15
    ]
    agents = [
        AgentSpec("tools", capabilities=frozenset({"tools"})),
        AgentSpec("eu-only", regions=frozenset({"eu"})),
        AgentSpec("thrifty", max_price_per_mtok=14.99),
        AgentSpec("just-enough", max_price_per_mtok=15.0),
    ]
    finite = np.isfinite(score_matrix(agents, targets))
    assert finite.tolist() == [
        [False, True, True],
        [False, True, False],
        [True, True, False],
        [True, True, True],
    ]
    assert blended_price(targets[2]) == 15.0


def test_cost_and_latency_are_normalized_over_the_targets() -> None:
    targets = [
        target("cheap", price=(1.0, 1.0)),
        target("mid", price=(2.0, 2.0)),
        target("dear", price=(5.0, 5.0)),
    ]
    agent = AgentSpec("a", quality_weight=0.0, cost_weight=1.0, latency_weight=2.0)
    latency = {"p/cheap": 300.0, "p/mid": 100.0}  # dear unmeasured: counts as the mean, 200
    scores = score_matrix([agent], targets, latency)
    # price: 0, 0.25, 1; latency: 1, 0, 0.5
    np.testing.assert_allclose(scores[0], [-2.0, -0.25, -2.0])


def test_equal_prices_cost_nothing() -> None:
    targets = [target("a", price=(3.0, 3.0)), target("b", price=(3.0, 3.0))]
    scores = score_matrix([AgentSpec("x", cost_weight=5.0)], targets)
    np.testing.assert_allclose(scores, [[0.5, 0.5]])


# --- solving ---------------------------------------------------------------------------------


def test_each_agent_gets_its_best_target_when_capacity_allows() -> None:
    targets = [target("a", quality={"code": 0.9, "general": 0.3}), target("b", quality=0.6)]
    agents = [AgentSpec("coder", category="code"), AgentSpec("writer")]
    result = solve(agents, targets)
    assert result.mapping() == {"coder": "p/a", "writer": "p/b"}
    assert result.unassigned == ()
    assert math.isclose(result.total_score, 0.9 + 0.6)


def test_capacity_spreads_agents() -> None:
    targets = [target("best", quality=0.9), target("next", quality=0.5)]
    agents = [AgentSpec(f"a{i}") for i in range(3)]
    result = solve(agents, targets, {"p/best": 1, "p/next": 2})
    assert Counter(result.mapping().values()) == {"p/best": 1, "p/next": 2}
    assert math.isclose(result.total_score, 0.9 + 0.5 + 0.5)


def test_placing_more_agents_beats_a_higher_score() -> None:
    # `flexible` scores higher on a, but `picky` can only use a: both must be placed.
    targets = [target("a", quality=0.9), target("b", capabilities=["chat"], quality=0.1)]
    agents = [AgentSpec("flexible"), AgentSpec("picky", capabilities=frozenset({"tools"}))]
    result = solve(agents, targets, {"p/a": 1, "p/b": 1})
    assert result.mapping() == {"flexible": "p/b", "picky": "p/a"}


def test_negative_scores_are_still_placed() -> None:
    targets = [target("dear", quality=0.0, price=(9.0, 9.0)), target("free", quality=0.0)]
    result = solve([AgentSpec("a", quality_weight=0.0, cost_weight=1.0)], targets, {"p/free": 0})
    assert result.mapping() == {"a": "p/dear"}
    assert result.total_score == -1.0


def test_unplaced_agents_say_why() -> None:
    targets = [
        target("chat", capabilities=["chat"], region="us", price=(4.0, 4.0)),
        target("tools", capabilities=["chat", "tools"], region="us", max_concurrency=1),
    ]
    agents = [
        AgentSpec("seer", capabilities=frozenset({"vision", "tools"})),
        AgentSpec("eu", regions=frozenset({"eu"})),
        AgentSpec("cheap", max_price_per_mtok=5.0, capabilities=frozenset({"chat"})),
        AgentSpec("first", capabilities=frozenset({"tools"}), quality_weight=2.0),
        AgentSpec("second", capabilities=frozenset({"tools"})),
    ]
    result = solve(agents, targets)
    assert len(result.placements) == 2
    assert result.mapping()["cheap"] == "p/chat"
    reasons = {u.agent: u.reason for u in result.unassigned}
    assert reasons["seer"] == "no model offers vision"
    assert reasons["eu"] == "no model in region eu"
    assert len(reasons) == 3
    # Only one of first/second fits on `tools` (capacity 1); the other is out for capacity.
    (left,) = {"first", "second"} & set(reasons)
    assert reasons[left] == CAPACITY_EXHAUSTED


def test_price_and_combination_reasons() -> None:
    targets = [
        target("t", capabilities=["tools"], price=(2.0, 2.0)),
        target("v", capabilities=["vision"], price=(2.0, 2.0)),
    ]
    both = AgentSpec("both", capabilities=frozenset({"tools", "vision"}))
    poor = AgentSpec("poor", max_price_per_mtok=1.5)
    reasons = {u.agent: u.reason for u in solve([both, poor], targets).unassigned}
    assert reasons == {
        "both": "no model offers all of tools, vision",
        "poor": "no model within the price ceiling of 1.5 USD per 1M tokens",
    }


def test_default_capacity_is_max_concurrency() -> None:
    limited = target("limited", quality=0.9, max_concurrency=2)
    assert default_capacity(limited, 10) == 2
    assert default_capacity(target("open"), 10) == 10
    result = solve([AgentSpec(f"a{i}") for i in range(4)], [limited])
    assert len(result.placements) == 2
    assert [u.reason for u in result.unassigned] == [CAPACITY_EXHAUSTED] * 2


def test_empty_inputs() -> None:
    assert solve([], [target("a")]) == Assignment((), ())
    result = solve([AgentSpec("x")], [])
    assert result.placements == ()
    assert result.unassigned[0].reason == "no model to choose from"


@pytest.mark.parametrize(
    ("agents", "capacity", "message"),
    [
        ([AgentSpec("x"), AgentSpec("x")], None, "agent 'x' appears twice"),
        ([AgentSpec("x")], {"p/nope": 1}, "not among the targets"),
        ([AgentSpec("x")], {"p/a": -1}, "negative"),
    ],
)
def test_bad_arguments(
    agents: list[AgentSpec], capacity: dict[str, int] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        solve(agents, [target("a")], capacity)


def test_duplicate_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="target 'p/a' appears twice"):
        solve([AgentSpec("x")], [target("a"), target("a")])


def test_scores_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        solve([AgentSpec("x")], [target("a")], scores=np.zeros((2, 1)))


# --- against brute force ---------------------------------------------------------------------

CAPS = ("chat", "tools", "vision")
REGIONS = ("eu", "us")


@st.composite
def instances(
    draw: st.DrawFn,
) -> tuple[list[AgentSpec], list[Target], dict[str, int], dict[str, float]]:
    n_targets = draw(st.integers(1, 4))
    targets = []
    for j in range(n_targets):
        targets.append(
            target(
                f"t{j}",
                capabilities=draw(st.lists(st.sampled_from(CAPS), unique=True)),
                quality={
                    "general": draw(st.floats(0, 1)),
                    "code": draw(st.floats(0, 1)),
                },
                price=(draw(st.floats(0, 10)), draw(st.floats(0, 10))),
                region=draw(st.sampled_from((None, *REGIONS))),
                max_concurrency=draw(st.none() | st.integers(1, 3)),
            )
        )
    agents = []
    for i in range(draw(st.integers(1, 5))):
        regions = draw(st.none() | st.frozensets(st.sampled_from(REGIONS), min_size=1))
        agents.append(
            AgentSpec(
                f"a{i}",
                capabilities=draw(st.frozensets(st.sampled_from(CAPS), max_size=2)),
                category=draw(st.sampled_from(("general", "code"))),
                quality_weight=draw(st.floats(0, 3)),
                cost_weight=draw(st.floats(0, 2)),
                latency_weight=draw(st.floats(0, 2)),
                regions=regions,
                max_price_per_mtok=draw(st.none() | st.floats(0, 10)),
            )
        )
    capacity = {
        t.id: draw(st.integers(1, 3)) for t in targets if draw(st.booleans())
    }  # the others: their max_concurrency, else unlimited
    latency = {t.id: draw(st.floats(1, 1000)) for t in targets if draw(st.booleans())}
    return agents, targets, capacity, latency


def brute_force(scores: np.ndarray, capacities: list[int]) -> tuple[int, float]:
    """The best (agents placed, total score), placed agents first, over every assignment."""
    n_agents, n_targets = scores.shape
    best = (0, 0.0)
    for choice in itertools.product(range(-1, n_targets), repeat=n_agents):
        load = Counter(j for j in choice if j >= 0)
        if any(load[j] > capacities[j] for j in load):
            continue
        if any(j >= 0 and not np.isfinite(scores[i, j]) for i, j in enumerate(choice)):
            continue
        placed = sum(1 for j in choice if j >= 0)
        total = float(sum(scores[i, j] for i, j in enumerate(choice) if j >= 0))
        if placed > best[0] or (placed == best[0] and total > best[1]):
            best = (placed, total)
    return best


@settings(max_examples=300, deadline=None)
@given(instances())
def test_solver_matches_brute_force(
    instance: tuple[list[AgentSpec], list[Target], dict[str, int], dict[str, float]],
) -> None:
    agents, targets, capacity, latency = instance
    scores = score_matrix(agents, targets, latency)
    capacities = [capacity.get(t.id, default_capacity(t, len(agents))) for t in targets]

    result = solve(agents, targets, capacity, latency)

    column = {t.id: j for j, t in enumerate(targets)}
    row = {a.name: i for i, a in enumerate(agents)}
    for placement in result.placements:
        i, j = row[placement.agent], column[placement.target]
        assert np.isfinite(scores[i, j]), "an infeasible pair was assigned"
        assert placement.score == scores[i, j]
    load = Counter(p.target for p in result.placements)
    assert all(load[t.id] <= capacities[column[t.id]] for t in targets)
    assert {p.agent for p in result.placements}.isdisjoint(u.agent for u in result.unassigned)
    assert len(result.placements) + len(result.unassigned) == len(agents)

    placed, total = brute_force(scores, capacities)
    assert len(result.placements) == placed
    assert math.isclose(result.total_score, total, rel_tol=1e-9, abs_tol=1e-9)
