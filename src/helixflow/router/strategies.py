"""Routing strategies: how the router orders the healthy, capable candidates for one request.

Each strategy is a class registered by name in :data:`STRATEGIES` and chosen per group
(``strategy: cost``, ``options: {quality_floor: 0.7}``). :meth:`Strategy.rank` returns every
candidate exactly once, best first: the router tries them in that order. The router filters out
unhealthy and incapable targets before calling ``rank``; strategies drop nothing themselves.
Strategies that learn from results get each attempt's :class:`Outcome` through ``observe``.
"""

from __future__ import annotations

import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar

from helixflow.router.signals import Outcome, RouteContext, Scored, TargetStats
from helixflow.router.strategies_adaptive import ThompsonSampler

SHARED_OPTIONS: frozenset[str] = frozenset({"category"})
"""Group options every strategy accepts and leaves to the router (the default task category)."""


def _usd(amount: float) -> str:
    return f"${amount:.3g}"


class Strategy(ABC):
    """Orders candidates for one request. Options come from the group, checked at construction."""

    name: ClassVar[str]
    option_names: ClassVar[frozenset[str]] = frozenset()
    """The options this strategy takes (besides :data:`SHARED_OPTIONS`)."""

    def __init__(
        self,
        options: Mapping[str, object],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        unknown = sorted(set(options) - self.option_names - SHARED_OPTIONS)
        if unknown:
            takes = ", ".join(sorted(self.option_names | SHARED_OPTIONS))
            raise ValueError(
                f"strategy {self.name!r} has no option {', '.join(map(repr, unknown))} "
                f"(it takes: {takes})"
            )
        category = options.get("category")
        if category is not None and not isinstance(category, str):
            raise ValueError(f"strategy {self.name!r}: option 'category' must be a string")
        self.options: Mapping[str, object] = MappingProxyType(dict(options))
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock if clock is not None else time.monotonic
        self._configure()

    def _configure(self) -> None:  # noqa: B027 - optional hook
        """Read this strategy's options from ``self.options`` and set up its state."""

    @abstractmethod
    def rank(self, candidates: Sequence[TargetStats], context: RouteContext) -> list[Scored]:
        """Every candidate exactly once, best first; ``Scored.note`` says why."""

    def observe(self, target_id: str, outcome: Outcome) -> None:  # noqa: B027 - optional hook
        """Learn from one attempt's (or one feedback's) outcome. Default: nothing."""

    def _number(
        self,
        key: str,
        default: float | None,
        *,
        minimum: float = 0.0,
        maximum: float = math.inf,
        exclusive_minimum: bool = False,
    ) -> float | None:
        """Option ``key`` as a finite number within bounds (``default`` when absent or null)."""
        value = self.options.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"strategy {self.name!r}: option {key!r} must be a number")
        number = float(value)
        too_low = number <= minimum if exclusive_minimum else number < minimum
        if not math.isfinite(number) or too_low or number > maximum:
            low = f"> {minimum:g}" if exclusive_minimum else f">= {minimum:g}"
            high = "" if maximum == math.inf else f" and <= {maximum:g}"
            raise ValueError(f"strategy {self.name!r}: option {key!r} must be {low}{high}")
        return number

    def _required(
        self,
        key: str,
        default: float,
        *,
        minimum: float = 0.0,
        maximum: float = math.inf,
        exclusive_minimum: bool = False,
    ) -> float:
        value = self._number(
            key, default, minimum=minimum, maximum=maximum, exclusive_minimum=exclusive_minimum
        )
        return default if value is None else value

    def _tiebreak(self) -> float:
        return self._rng.random()


class WeightedStrategy(Strategy):
    """A random draw in proportion to ``target.weight``; the rest follow by weight."""

    name = "weighted"

    def rank(self, candidates: Sequence[TargetStats], context: RouteContext) -> list[Scored]:
        weights = [max(c.target.weight, 0.0) for c in candidates]
        total = sum(weights)
        # Fallback order: by weight, ties in random order (so zero weights come last).
        order = sorted(range(len(candidates)), key=lambda i: (-weights[i], self._tiebreak()))
        if total > 0:
            # Draw the first in proportion to weight (with no positive weight, the random
            # tie-break above already made a uniform draw).
            point = self._rng.random() * total
            drawn = 0
            for position, index in enumerate(order):
                if weights[index] > 0:
                    drawn = position  # float rounding can leave ``point`` >= 0: last positive
                    point -= weights[index]
                    if point < 0:
                        break
            order.insert(0, order.pop(drawn))
        out: list[Scored] = []
        for rank, index in enumerate(order):
            target = candidates[index].target
            share = max(target.weight, 0.0) / total if total > 0 else 1.0 / len(candidates)
            how = "drawn" if rank == 0 else "fallback by weight"
            out.append(Scored(target, share, f"weight {target.weight:g} ({share:.0%}), {how}"))
        return out


class RoundRobinStrategy(Strategy):
    """Rotates: the candidate served longest ago (or never) goes first."""

    name = "round_robin"

    def _configure(self) -> None:
        self._served: dict[str, int] = {}
        self._tick = 0

    def rank(self, candidates: Sequence[TargetStats], context: RouteContext) -> list[Scored]:
        order = sorted(range(len(candidates)), key=lambda i: self._served.get(candidates[i].id, -1))
        if not order:
            return []
        self._tick += 1
        self._served[candidates[order[0]].id] = self._tick
        count = len(order)
        return [
            Scored(candidates[i].target, (count - rank) / count, f"turn {rank + 1} of {count}")
            for rank, i in enumerate(order)
        ]


class LeastOutstandingStrategy(Strategy):
    """Fewest requests in flight or queued, as a share of ``max_concurrency`` when it is set."""

    name = "least_outstanding"

    def rank(self, candidates: Sequence[TargetStats], context: RouteContext) -> list[Scored]:
        rows = []
        for c in candidates:
            limit = c.target.max_concurrency
            load = c.outstanding / limit if limit else float(c.outstanding)
            note = (
                f"{c.outstanding} outstanding of {limit} ({load:.0%})"
                if limit
                else f"{c.outstanding} outstanding"
            )
            rows.append((load, c.outstanding, self._tiebreak(), c, note))
        rows.sort(key=lambda row: row[:3])
        return [Scored(c.target, 1.0 / (1.0 + load), note) for load, _, _, c, note in rows]


class LowestLatencyStrategy(Strategy):
    """Lowest smoothed time to first token (else whole-request latency); unmeasured ones first.

    ``ttft_weight`` (default 1) blends the two when both are known: ``w * ttft + (1 - w) *
    latency``. A target with no measurement yet is tried first so it gets measured, unless a
    request to it is already outstanding (it is being measured): then it comes after the measured
    ones, so a burst does not pile onto an unknown target.
    """

    name = "lowest_latency"
    option_names = frozenset({"ttft_weight"})

    def _configure(self) -> None:
        self.ttft_weight = self._required("ttft_weight", 1.0, maximum=1.0)

    def estimate(self, stats: TargetStats) -> tuple[float | None, str]:
        """Expected latency in ms (None when unmeasured) and how it was reached."""
        ttft, latency, w = stats.ewma_ttft_ms, stats.ewma_latency_ms, self.ttft_weight
        if ttft is not None and latency is not None and 0.0 < w < 1.0:
            blend = w * ttft + (1.0 - w) * latency
            return blend, (
                f"ewma ttft {ttft:.0f} ms x {w:g} + latency {latency:.0f} ms x {1 - w:g}"
                f" = {blend:.0f} ms"
            )
        if ttft is not None and (latency is None or w > 0.0):
            return ttft, f"ewma ttft {ttft:.0f} ms"
        if latency is not None:
            return latency, f"ewma latency {latency:.0f} ms"
        return None, "no latency measured yet"

    def rank(self, candidates: Sequence[TargetStats], context: RouteContext) -> list[Scored]:
        # Sort key: (tier, value within the tier, random tie-break); score in [0, 1].
        rows: list[tuple[int, float, float, TargetStats, float, str]] = []
        for c in candidates:
            ms, note = self.estimate(c)
            if ms is not None:
                rows.append((1, ms, self._tiebreak(), c, 1000.0 / (1000.0 + ms), note))
            elif c.outstanding == 0:
                rows.append((0, 0.0, self._tiebreak(), c, 1.0, f"{note}: exploring"))
            else:
                note = f"{note}, {c.outstanding} outstanding"
                rows.append((2, c.outstanding, self._tiebreak(), c, 0.0, note))
        rows.sort(key=lambda row: row[:3])
        return [Scored(c.target, score, note) for _, _, _, c, score, note in rows]


class CostStrategy(Strategy):
    """Cheapest expected request among targets at or above ``quality_floor``; the rest after, by
    quality."""

    name = "cost"
    option_names = frozenset({"quality_floor"})

    def _configure(self) -> None:
        self.quality_floor = self._required("quality_floor", 0.0, maximum=1.0)

    def rank(self, candidates: Sequence[TargetStats], context: RouteContext) -> list[Scored]:
        rows = []
        for c in candidates:
            quality = c.target.score(context.category)
            cost = c.target.cost(context.prompt_tokens, context.expected_completion_tokens)
            if quality >= self.quality_floor:
                key = (0, cost, -quality)
                note = f"cost {_usd(cost)}, quality {quality:g} >= {self.quality_floor:g}"
            else:
                key = (1, -quality, cost)
                note = f"cost {_usd(cost)}, quality {quality:g} below floor {self.quality_floor:g}"
            rows.append((key, c.outstanding, self._tiebreak(), c, cost, note))
        rows.sort(key=lambda row: row[:3])
        return [Scored(c.target, -cost, note) for _, _, _, c, cost, note in rows]


class QualityStrategy(Strategy):
    """Highest quality for the request's category among targets within ``budget_usd`` per
    request (default: no budget); over-budget ones after, cheapest first."""

    name = "quality"
    option_names = frozenset({"budget_usd"})

    def _configure(self) -> None:
        self.budget_usd = self._number("budget_usd", None)

    def rank(self, candidates: Sequence[TargetStats], context: RouteContext) -> list[Scored]:
        budget = self.budget_usd
        rows = []
        for c in candidates:
            quality = c.target.score(context.category)
            cost = c.target.cost(context.prompt_tokens, context.expected_completion_tokens)
            note = f"quality {quality:g} ({context.category}), cost {_usd(cost)}"
            if budget is None or cost <= budget:
                key = (0, -quality, cost)
                note += "" if budget is None else f" <= budget {_usd(budget)}"
            else:
                key = (1, cost, -quality)
                note += f" over budget {_usd(budget)}"
            rows.append((key, c.outstanding, self._tiebreak(), c, quality, note))
        rows.sort(key=lambda row: row[:3])
        return [Scored(c.target, quality, note) for _, _, _, c, quality, note in rows]


class AdaptiveStrategy(Strategy):
    """Thompson sampling on "good outcome" (success within ``latency_target_ms``) and feedback.

    Each target has a Beta(1, 1)-prior posterior; ``rank`` draws one value from each and orders
    by the draws, so well-performing targets win most requests while uncertain ones still get
    tried. ``half_life_s`` makes old evidence fade.
    """

    name = "adaptive"
    option_names = frozenset({"latency_target_ms", "half_life_s"})

    def _configure(self) -> None:
        self.latency_target_ms = self._required("latency_target_ms", 2000.0, exclusive_minimum=True)
        self.half_life_s = self._number("half_life_s", None, exclusive_minimum=True)
        self._bandit = ThompsonSampler(clock=self._clock, half_life_s=self.half_life_s)

    def rank(self, candidates: Sequence[TargetStats], context: RouteContext) -> list[Scored]:
        rows = []
        for c in candidates:
            posterior = self._bandit.posterior(c.id)
            draw = posterior.sample(self._rng)
            note = (
                f"sampled {draw:.3f} from Beta({posterior.alpha:.1f}, {posterior.beta:.1f}), "
                f"mean {posterior.mean:.2f}"
            )
            rows.append((-draw, c, note))
        rows.sort(key=lambda row: row[0])
        return [Scored(c.target, -neg, note) for neg, c, note in rows]

    def observe(self, target_id: str, outcome: Outcome) -> None:
        if outcome.feedback is not None:
            reward = outcome.feedback
        else:
            good = outcome.success and outcome.latency_ms <= self.latency_target_ms
            reward = 1.0 if good else 0.0
        self._bandit.update(target_id, reward)

    def posterior(self, target_id: str) -> tuple[float, float]:
        """The target's Beta (alpha, beta) now."""
        posterior = self._bandit.posterior(target_id)
        return posterior.alpha, posterior.beta


STRATEGIES: Mapping[str, type[Strategy]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (
            WeightedStrategy,
            RoundRobinStrategy,
            LeastOutstandingStrategy,
            LowestLatencyStrategy,
            CostStrategy,
            QualityStrategy,
            AdaptiveStrategy,
        )
    }
)
"""Every strategy by name."""


def make_strategy(
    name: str,
    options: Mapping[str, object] | None = None,
    rng: random.Random | None = None,
    *,
    clock: Callable[[], float] | None = None,
) -> Strategy:
    """The strategy called ``name`` with the group's options (ValueError when unknown or bad)."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ValueError(
            f"unknown routing strategy {name!r}; known strategies: {', '.join(sorted(STRATEGIES))}"
        )
    return cls(options or {}, rng=rng, clock=clock)
