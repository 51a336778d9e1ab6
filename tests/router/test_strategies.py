"""Routing strategies: registry, option checks, and how each orders candidates.

Random strategies get a seeded ``random.Random``; their statistical bounds are several standard
deviations wide, so they hold for the fixed seed and would for almost any other.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from helixflow.router.catalogue import Target
from helixflow.router.signals import Outcome, RouteContext, TargetStats
from helixflow.router.strategies import (
    STRATEGIES,
    AdaptiveStrategy,
    CostStrategy,
    Strategy,
    make_strategy,
)
from tests.router import factories
from tests.router.factories import Clock

ALL_NAMES = {
    "weighted",
    "round_robin",
    "least_outstanding",
    "lowest_latency",
    "cost",
    "quality",
    "adaptive",
}
CTX = RouteContext()


def target(name: str, *, price_in: float = 0.0, price_out: float = 0.0, **fields: Any) -> Target:
    """``p/<name>``; ``price_in``/``price_out``: per million input/output tokens."""
    return factories.target(
        f"p/{name}", input_price_per_mtok=price_in, output_price_per_mtok=price_out, **fields
    )


def stats(name: str, **kwargs: object) -> TargetStats:
    target_fields = {"weight", "max_concurrency", "price_in", "price_out", "quality"}
    t = target(name, **{k: v for k, v in kwargs.items() if k in target_fields})  # type: ignore[arg-type]
    return TargetStats(t, **{k: v for k, v in kwargs.items() if k not in target_fields})  # type: ignore[arg-type]


def ids(
    strategy: Strategy, candidates: Sequence[TargetStats], ctx: RouteContext = CTX
) -> list[str]:
    return [s.target.model for s in strategy.rank(candidates, ctx)]


def firsts(strategy: Strategy, candidates: Sequence[TargetStats], n: int) -> Counter[str]:
    return Counter(ids(strategy, candidates)[0] for _ in range(n))


# --- registry and options -------------------------------------------------------------------


def test_registry_holds_every_strategy_by_its_name() -> None:
    assert set(STRATEGIES) == ALL_NAMES
    for name, cls in STRATEGIES.items():
        assert cls.name == name
        assert type(make_strategy(name, {})) is cls
    with pytest.raises(TypeError):
        STRATEGIES["mine"] = CostStrategy  # type: ignore[index]


def test_unknown_strategy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="fastest") as error:
        make_strategy("fastest", {})
    for name in ALL_NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("weighted", {"quality_floor": 0.5}, "quality_floor"),
        ("cost", {"budget_usd": 1}, "budget_usd"),
        ("cost", {"quality_floor": 1.5}, "quality_floor"),
        ("cost", {"quality_floor": "high"}, "number"),
        ("cost", {"quality_floor": True}, "number"),
        ("cost", {"quality_floor": math.nan}, "quality_floor"),
        ("quality", {"budget_usd": -0.01}, "budget_usd"),
        ("lowest_latency", {"ttft_weight": 1.1}, "ttft_weight"),
        ("lowest_latency", {"ttft_weight": -0.1}, "ttft_weight"),
        ("adaptive", {"latency_target_ms": 0}, "latency_target_ms"),
        ("adaptive", {"half_life_s": 0}, "half_life_s"),
        ("adaptive", {"half_life_s": math.inf}, "half_life_s"),
        ("round_robin", {"category": 3}, "category"),
    ],
)
def test_bad_options_are_refused(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_strategy(name, options)


@pytest.mark.parametrize("name", sorted(ALL_NAMES))
def test_every_strategy_accepts_the_group_category(name: str) -> None:
    make_strategy(name, {"category": "code"})


def test_good_options_are_read() -> None:
    cost = make_strategy("cost", {"quality_floor": 0.7})
    assert isinstance(cost, CostStrategy)
    assert cost.quality_floor == 0.7
    adaptive = make_strategy("adaptive", {"latency_target_ms": 500, "half_life_s": 60})
    assert isinstance(adaptive, AdaptiveStrategy)
    assert (adaptive.latency_target_ms, adaptive.half_life_s) == (500.0, 60.0)


# --- every strategy ---------------------------------------------------------------------------

MIXED = [
    stats("a", weight=3, in_flight=2, max_concurrency=4, ewma_ttft_ms=80.0, price_in=1),
    stats("b", weight=0, ewma_latency_ms=900.0, quality={"general": 0.9}, price_out=5),
    stats("c", weight=1, queue_depth=3, in_flight=1),
    stats("d", weight=1, ewma_ttft_ms=80.0, ewma_latency_ms=300.0, quality={"code": 0.2}),
    stats("e", weight=2.5, in_flight=1, price_in=0.2, price_out=0.4),
    stats("f", weight=1, ewma_latency_ms=50.0, quality={"general": 0.1}),
]


@pytest.mark.parametrize("name", sorted(ALL_NAMES))
def test_every_candidate_comes_back_exactly_once(name: str) -> None:
    strategy = make_strategy(name, {}, random.Random(7))
    ctx = RouteContext(category="code", prompt_tokens=500, max_tokens=100)
    for round_ in range(50):
        ranked = strategy.rank(MIXED, ctx)
        assert sorted(s.target.id for s in ranked) == sorted(c.id for c in MIXED)
        assert all(math.isfinite(s.score) and s.note for s in ranked)
        strategy.observe(ranked[0].target.id, Outcome(success=round_ % 3 > 0, latency_ms=100))
    assert strategy.rank([], ctx) == []
    assert ids(strategy, MIXED[:1]) == ["a"]


# --- weighted ---------------------------------------------------------------------------------


def test_weighted_draws_in_proportion_to_weight_and_keeps_zero_weight_last() -> None:
    strategy = make_strategy("weighted", {}, random.Random(1))
    candidates = [stats("a", weight=1), stats("zero", weight=0), stats("b", weight=2),
                  stats("c", weight=7)]  # fmt: skip
    draws = 20_000
    seen: Counter[str] = Counter()
    for _ in range(draws):
        ranked = strategy.rank(candidates, CTX)
        seen[ranked[0].target.model] += 1
        assert ranked[-1].target.model == "zero"
        rest = [s.target.weight for s in ranked[1:]]
        assert rest == sorted(rest, reverse=True)
    assert seen["zero"] == 0
    for name, share in {"a": 0.1, "b": 0.2, "c": 0.7}.items():
        assert abs(seen[name] / draws - share) < 0.02, seen


def test_weighted_breaks_ties_and_all_zero_weights_by_draw() -> None:
    strategy = make_strategy("weighted", {}, random.Random(2))
    equal = firsts(strategy, [stats("a"), stats("b")], 4000)
    assert 1700 < equal["a"] < 2300
    zeros = firsts(strategy, [stats(n, weight=0) for n in "xyz"], 3000)
    assert all(800 < zeros[n] < 1200 for n in "xyz"), zeros


# --- round robin ------------------------------------------------------------------------------


def test_round_robin_cycles_and_follows_changes_in_the_candidates() -> None:
    strategy = make_strategy("round_robin", {})
    a, b, c, d = (stats(n) for n in "abcd")
    assert [ids(strategy, [a, b, c])[0] for _ in range(6)] == list("abcabc")
    assert ids(strategy, [a, b, c]) == list("abc")  # the fallbacks follow the rotation too
    # b is left out (unhealthy): the others keep taking turns; a newcomer goes first.
    assert [ids(strategy, [a, c])[0] for _ in range(3)] == list("cac")
    assert ids(strategy, [a, b, c, d])[0] == "d"
    assert ids(strategy, [a, b, c, d])[0] == "b"


# --- least outstanding ------------------------------------------------------------------------


def test_least_outstanding_prefers_idle_targets() -> None:
    strategy = make_strategy("least_outstanding", {}, random.Random(3))
    candidates = [stats("busy", in_flight=3), stats("idle"), stats("queued", queue_depth=1)]
    assert ids(strategy, candidates) == ["idle", "queued", "busy"]


def test_least_outstanding_counts_relative_to_max_concurrency() -> None:
    strategy = make_strategy("least_outstanding", {}, random.Random(3))
    big = stats("big", in_flight=4, max_concurrency=8)  # half full
    small = stats("small", in_flight=2, queue_depth=1, max_concurrency=4)  # three quarters
    ranked = strategy.rank([small, big], CTX)
    assert [s.target.model for s in ranked] == ["big", "small"]
    assert "4 outstanding of 8" in ranked[0].note
    assert ranked[0].score > ranked[1].score


# --- lowest latency ---------------------------------------------------------------------------


def test_lowest_latency_explores_unmeasured_targets_then_prefers_the_fast_one() -> None:
    strategy = make_strategy("lowest_latency", {}, random.Random(4))
    slow = stats("slow", ewma_ttft_ms=900.0, ewma_latency_ms=3000.0)
    fast = stats("fast", ewma_ttft_ms=120.0, ewma_latency_ms=2500.0)
    new = stats("new")
    ranked = strategy.rank([slow, fast, new], CTX)
    assert [s.target.model for s in ranked] == ["new", "fast", "slow"]
    assert "exploring" in ranked[0].note
    assert ranked[1].note == "ewma ttft 120 ms"
    # While its first request runs, the new target no longer jumps the queue.
    measuring = stats("new", in_flight=1)
    assert ids(strategy, [slow, measuring, fast]) == ["fast", "slow", "new"]
    # Once measured, it takes its place by speed.
    measured = stats("new", ewma_ttft_ms=400.0, ewma_latency_ms=400.0)
    assert ids(strategy, [slow, measured, fast]) == ["fast", "new", "slow"]


def test_lowest_latency_blends_ttft_and_total_latency() -> None:
    quick_start = stats("quick_start", ewma_ttft_ms=100.0, ewma_latency_ms=1000.0)  # 550 at 0.5
    steady = stats("steady", ewma_ttft_ms=400.0, ewma_latency_ms=500.0)  # 450 at 0.5
    whole_only = stats("whole_only", ewma_latency_ms=470.0)  # no ttft: latency either way
    candidates = [quick_start, steady, whole_only]
    ttft_only = make_strategy("lowest_latency", {}, random.Random(5))
    assert ids(ttft_only, candidates) == ["quick_start", "steady", "whole_only"]
    blended = make_strategy("lowest_latency", {"ttft_weight": 0.5}, random.Random(5))
    assert ids(blended, candidates) == ["steady", "whole_only", "quick_start"]
    total = make_strategy("lowest_latency", {"ttft_weight": 0}, random.Random(5))
    assert ids(total, candidates) == ["whole_only", "steady", "quick_start"]


# --- cost and quality -------------------------------------------------------------------------

CHEAP = stats("cheap", price_in=0.1, price_out=0.2, quality={"general": 0.5, "code": 0.9})
MID = stats("mid", price_in=1, price_out=2, quality={"general": 0.8})
PRICEY = stats("pricey", price_in=10, price_out=30, quality={"general": 0.95})
BIG = RouteContext(prompt_tokens=1000, max_tokens=1000)  # costs 0.0003, 0.003, 0.04 USD


def test_cost_prefers_the_cheapest_target_meeting_the_quality_floor() -> None:
    candidates = [PRICEY, CHEAP, MID]
    assert ids(make_strategy("cost", {}), candidates, BIG) == ["cheap", "mid", "pricey"]
    floored = make_strategy("cost", {"quality_floor": 0.7})
    ranked = floored.rank(candidates, BIG)
    assert [s.target.model for s in ranked] == ["mid", "pricey", "cheap"]
    assert ranked[0].note == "cost $0.003, quality 0.8 >= 0.7"
    assert "below floor" in ranked[-1].note
    # Quality is per category: cheap is good at code.
    code = RouteContext(category="code", prompt_tokens=1000, max_tokens=1000)
    assert ids(floored, candidates, code)[0] == "cheap"
    # Below the floor: best quality first.
    high = make_strategy("cost", {"quality_floor": 0.99})
    assert ids(high, candidates, BIG) == ["pricey", "mid", "cheap"]


def test_quality_prefers_the_best_target_within_budget() -> None:
    other = stats("other", price_in=5, price_out=10, quality={"general": 0.99})  # 0.015 USD
    candidates = [CHEAP, PRICEY, other, MID]
    assert ids(make_strategy("quality", {}), candidates, BIG) == ["other", "pricey", "mid", "cheap"]
    budgeted = make_strategy("quality", {"budget_usd": 0.005})
    ranked = budgeted.rank(candidates, BIG)
    # Within budget by quality, then over budget by cost.
    assert [s.target.model for s in ranked] == ["mid", "cheap", "other", "pricey"]
    assert "over budget" in ranked[-1].note
    assert ranked[0].score == 0.8


# --- adaptive ---------------------------------------------------------------------------------


def simulate(
    strategy: Strategy,
    behaviour: dict[str, tuple[float, float]],
    rounds: int,
    rng: random.Random,
    clock: Clock | None = None,
) -> list[str]:
    """Route ``rounds`` requests; each target succeeds with probability p in latency ms."""
    candidates = [stats(name) for name in behaviour]
    chosen = []
    for _ in range(rounds):
        name = ids(strategy, candidates)[0]
        p, latency = behaviour[name]
        strategy.observe(f"p/{name}", Outcome(success=rng.random() < p, latency_ms=latency))
        chosen.append(name)
        if clock is not None:
            clock.advance(1.0)
    return chosen


def test_adaptive_converges_on_the_target_that_succeeds_fast() -> None:
    strategy = make_strategy("adaptive", {}, random.Random(11))
    world = {"slow": (1.0, 5000.0), "flaky": (0.5, 300.0), "fast": (1.0, 300.0)}
    chosen = simulate(strategy, world, 400, random.Random(12))
    assert Counter(chosen[-100:])["fast"] >= 90, Counter(chosen[-100:])
    assert set(chosen[:50]) == set(world)  # every target was tried early on


def test_adaptive_latency_target_decides_what_counts_as_good() -> None:
    strict = AdaptiveStrategy({"latency_target_ms": 1000})
    lenient = AdaptiveStrategy({"latency_target_ms": 3000})
    for strategy in (strict, lenient):
        strategy.observe("p/a", Outcome(success=True, latency_ms=2500))
    assert strict.posterior("p/a") == (1.0, 2.0)
    assert lenient.posterior("p/a") == (2.0, 1.0)


def test_adaptive_turns_away_from_a_target_that_starts_failing() -> None:
    strategy = make_strategy("adaptive", {}, random.Random(13))
    a, b = stats("a"), stats("b")
    for _ in range(50):
        strategy.observe("p/a", Outcome(success=True, latency_ms=100))
    for _ in range(40):
        strategy.observe("p/b", Outcome(success=True, latency_ms=100))
    for _ in range(10):
        strategy.observe("p/b", Outcome(success=False, latency_ms=100))
    assert firsts(strategy, [a, b], 200)["a"] > 150
    for _ in range(100):
        strategy.observe("p/a", Outcome(success=False, latency_ms=100))
    assert firsts(strategy, [a, b], 200)["b"] > 190


def test_adaptive_with_a_half_life_relearns_after_a_change() -> None:
    clock = Clock(t=0.0)
    strategy = make_strategy("adaptive", {"half_life_s": 20}, random.Random(14), clock=clock)
    world = {"fast": (1.0, 300.0), "flaky": (0.5, 300.0)}
    simulate(strategy, world, 300, random.Random(15), clock)
    world["fast"] = (0.0, 300.0)  # it goes down
    chosen = simulate(strategy, world, 200, random.Random(16), clock)
    assert Counter(chosen[-100:])["flaky"] > 70, Counter(chosen[-100:])


def test_adaptive_evidence_fades_with_the_half_life() -> None:
    clock = Clock(t=0.0)
    strategy = AdaptiveStrategy({"half_life_s": 10}, clock=clock)
    for _ in range(8):
        strategy.observe("p/a", Outcome(success=True, latency_ms=10))
    assert strategy.posterior("p/a") == (9.0, 1.0)
    clock.t = 10.0
    assert strategy.posterior("p/a") == pytest.approx((5.0, 1.0))
    clock.t = 20.0
    strategy.observe("p/a", Outcome(success=False, latency_ms=10))
    assert strategy.posterior("p/a") == pytest.approx((3.0, 2.0))
    without = AdaptiveStrategy({}, clock=clock)
    without.observe("p/a", Outcome(success=True, latency_ms=10))
    clock.t = 1e6
    assert without.posterior("p/a") == (2.0, 1.0)


def test_adaptive_feedback_counts_as_fractional_success() -> None:
    strategy = AdaptiveStrategy({}, rng=random.Random(17))
    assert strategy.posterior("p/a") == (1.0, 1.0)
    # A feedback outcome is judged by its rating, not by success or latency.
    strategy.observe("p/a", Outcome(success=False, latency_ms=99_999, feedback=0.25))
    assert strategy.posterior("p/a") == (1.25, 1.75)
    strategy.observe("p/a", Outcome(success=True, latency_ms=0, feedback=7.0))  # clamped to 1
    assert strategy.posterior("p/a") == (2.25, 1.75)
    liked, disliked = stats("liked"), stats("disliked")
    for _ in range(30):
        strategy.observe("p/liked", Outcome(success=True, latency_ms=0, feedback=0.9))
        strategy.observe("p/disliked", Outcome(success=True, latency_ms=0, feedback=0.1))
    assert firsts(strategy, [disliked, liked], 200)["liked"] > 190
    ranked = strategy.rank([disliked, liked], CTX)
    assert ranked[0].score >= ranked[1].score
    assert "Beta(" in ranked[0].note
