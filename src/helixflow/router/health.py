"""Health and load of every target: outcomes, smoothed latencies, in-flight requests and the
circuit breaker, turned into the snapshots strategies rank and the windows alerts check."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from helixflow.router.alerts import TargetWindow
from helixflow.router.breaker import CircuitBreaker
from helixflow.router.catalogue import Target
from helixflow.router.signals import CircuitState, Outcome, TargetStats
from helixflow.routing_config import BreakerConfig

log = logging.getLogger(__name__)

_WINDOW_CAP = 10_000
"""Most outcomes kept per target for alert windows (the oldest go first)."""


def _ewma(old: float | None, sample: float, alpha: float) -> float:
    return sample if old is None else old + alpha * (sample - old)


@dataclass(slots=True)
class TargetHealth:
    """What is known about one target right now."""

    target: Target
    breaker: CircuitBreaker
    in_flight: int = 0
    successes: int = 0
    failures: int = 0
    ewma_latency_ms: float | None = None
    ewma_ttft_ms: float | None = None
    tokens_per_s: float | None = None
    last_error: str | None = None
    probe_ok: bool | None = None
    """The last active probe's result (None: never probed)."""
    recent: deque[tuple[float, bool, float]] = field(default_factory=deque)
    """(time, success, latency ms) of recent outcomes, for alert windows."""


class HealthBoard:
    """One :class:`TargetHealth` per target; the router's only source of load and health."""

    def __init__(
        self,
        targets: Iterable[Target],
        breaker: BreakerConfig,
        *,
        alpha: float = 0.2,
        queue_depth: Callable[[Target], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._alpha = alpha
        self._clock = clock
        self._queue_depth = queue_depth
        self._health = {
            t.id: TargetHealth(t, CircuitBreaker(breaker, clock=clock)) for t in targets
        }

    def __getitem__(self, target_id: str) -> TargetHealth:
        return self._health[target_id]

    def stats(self, target: Target) -> TargetStats:
        h = self._health[target.id]
        return TargetStats(
            target=target,
            in_flight=h.in_flight,
            queue_depth=self._queue_depth(target) if self._queue_depth and target.local else 0,
            ewma_latency_ms=h.ewma_latency_ms,
            ewma_ttft_ms=h.ewma_ttft_ms,
            tokens_per_s=h.tokens_per_s,
            successes=h.successes,
            failures=h.failures,
            circuit=h.breaker.state,
        )

    def circuit(self, target_id: str) -> CircuitState:
        return self._health[target_id].breaker.state

    def available(self, target: Target) -> bool:
        """Closed, or half-open with a trial slot free."""
        return self._health[target.id].breaker.allows()

    def begin(self, target: Target) -> bool:
        """Start an attempt: False when the circuit refuses it."""
        h = self._health[target.id]
        if not h.breaker.acquire():
            return False
        h.in_flight += 1
        return True

    def end(self, target: Target, outcome: Outcome, *, error: str | None = None) -> None:
        """Finish an attempt started with :meth:`begin`."""
        h = self._health[target.id]
        h.in_flight = max(0, h.in_flight - 1)
        before = h.breaker.state
        h.breaker.record(outcome.success)
        if outcome.success:
            h.successes += 1
            h.ewma_latency_ms = _ewma(h.ewma_latency_ms, outcome.latency_ms, self._alpha)
            if outcome.ttft_ms is not None:
                h.ewma_ttft_ms = _ewma(h.ewma_ttft_ms, outcome.ttft_ms, self._alpha)
                decode_s = (outcome.latency_ms - outcome.ttft_ms) / 1000
                if outcome.completion_tokens > 1 and decode_s > 0:
                    rate = (outcome.completion_tokens - 1) / decode_s
                    h.tokens_per_s = _ewma(h.tokens_per_s, rate, self._alpha)
        else:
            h.failures += 1
            h.last_error = error
        h.recent.append((self._clock(), outcome.success, outcome.latency_ms))
        if len(h.recent) > _WINDOW_CAP:
            h.recent.popleft()
        self._log_transition(h, before)

    def release(self, target: Target) -> None:
        """Finish an attempt that says nothing of the target's health (the client left)."""
        h = self._health[target.id]
        h.in_flight = max(0, h.in_flight - 1)
        h.breaker.release()

    def force(self, target: Target, state: CircuitState) -> None:
        h = self._health[target.id]
        before = h.breaker.state
        h.breaker.force(state)
        log.warning("circuit of %s forced %s by an operator", target.id, state)
        self._log_transition(h, before)

    def probed(self, target: Target, ok: bool, error: str | None = None) -> None:
        h = self._health[target.id]
        before = h.breaker.state
        h.probe_ok = ok
        if ok:
            h.breaker.probe_succeeded()
        else:
            h.last_error = error
            h.breaker.probe_failed()
        self._log_transition(h, before)

    def _log_transition(self, h: TargetHealth, before: CircuitState) -> None:
        after = h.breaker.state
        if after == before:
            return
        level = logging.WARNING if after == "open" else logging.INFO
        log.log(
            level,
            "circuit of %s: %s -> %s%s",
            h.target.id,
            before,
            after,
            f" (last error: {h.last_error})" if after == "open" and h.last_error else "",
        )

    def windows(self, window_s: float) -> list[TargetWindow]:
        """Per target, the outcomes of the last ``window_s`` seconds (for alert rules)."""
        horizon = self._clock() - window_s
        out: list[TargetWindow] = []
        for h in self._health.values():
            recent = [(ok, ms) for t, ok, ms in h.recent if t >= horizon]
            latencies = sorted(ms for ok, ms in recent if ok)
            p95 = latencies[max(0, math.ceil(0.95 * len(latencies)) - 1)] if latencies else None
            out.append(
                TargetWindow(
                    target=h.target.id,
                    requests=len(recent),
                    errors=sum(1 for ok, _ in recent if not ok),
                    latency_p95_ms=p95,
                    circuit=h.breaker.state,
                )
            )
        return out

    def __iter__(self) -> Iterator[TargetHealth]:
        return iter(self._health.values())
