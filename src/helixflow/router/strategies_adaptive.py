"""Thompson sampling for the ``adaptive`` strategy: one Beta posterior per target.

Each target's posterior counts "good" and "bad" evidence on top of a Beta(prior_alpha,
prior_beta) prior. A reward in [0, 1] adds ``reward`` to the good side and ``1 - reward`` to the
bad side, so a finished attempt counts 0 or 1 and a caller's feedback counts fractionally. With a
half-life, evidence fades by half every ``half_life_s`` seconds, so a target that got better (or
worse) is re-learned instead of being judged on its history forever.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Posterior:
    """A target's Beta posterior at one moment."""

    alpha: float
    beta: float

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def sample(self, rng: random.Random) -> float:
        return rng.betavariate(self.alpha, self.beta)


@dataclass(slots=True)
class _Evidence:
    good: float = 0.0
    bad: float = 0.0
    at: float = 0.0
    """Clock reading when ``good`` and ``bad`` were last brought up to date."""


class ThompsonSampler:
    """Beta posteriors keyed by target id, with optional exponential forgetting."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        half_life_s: float | None = None,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
    ) -> None:
        if half_life_s is not None and not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, not {half_life_s}")
        if not (prior_alpha > 0 and prior_beta > 0):
            raise ValueError("Beta priors must be > 0")
        self._clock = clock
        self._half_life_s = half_life_s
        self._prior_alpha = prior_alpha
        self._prior_beta = prior_beta
        self._evidence: dict[str, _Evidence] = {}

    def _decay(self, evidence: _Evidence, now: float) -> float:
        if self._half_life_s is None or now <= evidence.at:
            return 1.0
        return math.pow(0.5, (now - evidence.at) / self._half_life_s)

    def posterior(self, key: str) -> Posterior:
        """The posterior now (the prior for a key never updated)."""
        evidence = self._evidence.get(key)
        if evidence is None:
            return Posterior(self._prior_alpha, self._prior_beta)
        factor = self._decay(evidence, self._clock())
        return Posterior(
            self._prior_alpha + evidence.good * factor, self._prior_beta + evidence.bad * factor
        )

    def update(self, key: str, reward: float) -> None:
        """Add one observation worth ``reward`` in [0, 1] (clamped; NaN is ignored)."""
        if math.isnan(reward):
            return
        reward = min(1.0, max(0.0, reward))
        now = self._clock()
        evidence = self._evidence.get(key)
        if evidence is None:
            evidence = self._evidence[key] = _Evidence(at=now)
        factor = self._decay(evidence, now)
        evidence.good = evidence.good * factor + reward
        evidence.bad = evidence.bad * factor + (1.0 - reward)
        evidence.at = max(evidence.at, now)

    def forget(self, key: str) -> None:
        self._evidence.pop(key, None)
