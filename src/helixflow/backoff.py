"""Exponential backoff with jitter, shared by everything that retries."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff_delays(
    base_s: float, max_s: float, attempts: int, rng: random.Random | None = None
) -> Iterator[float]:
    """``attempts`` delays: base, 2*base, 4*base... capped at ``max_s``, each in [d/2, d].

    Half of each delay is random ("equal jitter") so that replicas restarted together do not
    retry in lockstep, while every wait stays at least half the nominal one.
    """
    draw = rng or random.Random()
    for attempt in range(attempts):
        delay = min(max_s, base_s * (2**attempt))
        yield delay / 2 + draw.uniform(0, delay / 2)
