"""A circuit breaker per target: closed -> open on failures -> half-open trial -> closed.

Closed lets everything through and counts. It opens after ``failure_threshold`` consecutive
failures, or when the failure share over the last ``window_s`` reaches ``failure_rate`` with at
least ``min_requests`` outcomes. Open refuses everything for ``open_s``; then half-open lets
``half_open_requests`` trials through: a success closes it, a failure opens it again. A
successful active probe of an open target moves it to half-open early.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from helixflow.router.signals import CircuitState
from helixflow.routing_config import BreakerConfig


class CircuitBreaker:
    def __init__(
        self, config: BreakerConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock
        self._state: CircuitState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._trials = 0
        self._outcomes: deque[tuple[float, bool]] = deque()
        self.transitions = 0
        """How many times the state changed (for metrics and tests)."""

    @property
    def state(self) -> CircuitState:
        if self._state == "open" and self._clock() - self._opened_at >= self._config.open_s:
            self._move("half_open")
        return self._state

    def allows(self) -> bool:
        """Whether a request may be sent now (without taking a half-open trial slot)."""
        state = self.state
        return state == "closed" or (
            state == "half_open" and self._trials < self._config.half_open_requests
        )

    def acquire(self) -> bool:
        """Take the right to send one request: always when closed, one of the trial slots
        when half-open, never when open."""
        if not self.allows():
            return False
        if self._state == "half_open":
            self._trials += 1
        return True

    def record(self, success: bool) -> None:
        now = self._clock()
        if self._state == "half_open":
            self._trials = max(0, self._trials - 1)
            if success:
                self._close()
            else:
                self._open(now)
            return
        self._outcomes.append((now, success))
        self._trim(now)
        if success:
            self._consecutive = 0
            return
        self._consecutive += 1
        if self._state == "closed" and (
            self._consecutive >= self._config.failure_threshold or self._rate_exceeded()
        ):
            self._open(now)

    def release(self) -> None:
        """An acquired request ended saying nothing of the target (the client left): give
        back its half-open trial slot, without closing or opening the circuit."""
        if self._state == "half_open":
            self._trials = max(0, self._trials - 1)

    def force(self, state: CircuitState) -> None:
        """An operator's override: ``closed`` forgets past failures, ``open`` drains the
        target for ``open_s`` (then a half-open trial, as usual)."""
        if state == "open":
            self._open(self._clock())
        elif state == "closed":
            self._close()
        else:
            self._move("half_open")

    def probe_succeeded(self) -> None:
        """An active health probe answered: an open circuit may try a request now."""
        if self._state == "open":
            self._move("half_open")

    def probe_failed(self) -> None:
        """An active probe failed: a closed circuit counts it as a failure."""
        if self._state != "open":
            self.record(False)

    def _rate_exceeded(self) -> bool:
        n = len(self._outcomes)
        if n < self._config.min_requests:
            return False
        failures = sum(1 for _, ok in self._outcomes if not ok)
        return failures / n >= self._config.failure_rate

    def _trim(self, now: float) -> None:
        horizon = now - self._config.window_s
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._trials = 0
        self._move("open")

    def _close(self) -> None:
        self._consecutive = 0
        self._outcomes.clear()
        self._move("closed")

    def _move(self, state: CircuitState) -> None:
        if state != self._state:
            self._state = state
            self._trials = 0
            self.transitions += 1
