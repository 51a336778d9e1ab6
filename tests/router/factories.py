"""Builders shared by the router tests: a hand-moved clock, targets, a strategy factory."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from helixflow.router.catalogue import Target
from helixflow.router.strategies import Strategy, make_strategy


@dataclass
class Clock:
    """Monotonic seconds, moved by hand: pass it where the code under test takes ``clock=``."""

    t: float = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def target(target_id: str, *, capabilities: Iterable[str] = ("chat",), **fields: Any) -> Target:
    """The target ``<provider>/<model>``, asking the upstream for the model by the same name:
    local when the provider is ``local``, else upstream. ``fields``: any other Target field."""
    provider, model = target_id.split("/")
    return Target(
        id=target_id,
        model=model,
        provider=provider,
        upstream_model=model,
        kind="local" if provider == "local" else "upstream",
        capabilities=frozenset(capabilities),
        **fields,
    )


class StrategyFactory:
    """``make_strategy`` with a seeded generator, keeping every strategy it made."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.made: list[Strategy] = []

    def __call__(self, name: str, options: Mapping[str, object]) -> Strategy:
        strategy = make_strategy(name, options, random.Random(self.seed))
        self.made.append(strategy)
        return strategy
