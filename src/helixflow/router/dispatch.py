"""Executing a route plan: each target in turn, retries with backoff, never a lost request.

An *attempt* is an async function of the target that either returns a result (a whole reply,
or a stream whose first token is in hand) or raises. Connect errors, 429 and 5xx are retried
on the same target with exponential backoff and jitter, honouring ``Retry-After`` up to
``retry_after_max_s``; then the next target of the plan is tried. A request the target refused
as invalid is not retried anywhere. Once a result is returned its :class:`Lease` is open: the
caller closes it when the reply has been delivered (or failed mid-way), which is when the
target's health and the strategy learn how it went. No retry ever happens after a token has
reached the client: that is the point where a result is returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from helixflow.backoff import backoff_delays
from helixflow.errors import (
    HelixFlowError,
    NoTargetAvailableError,
    RateLimitError,
    UpstreamError,
)
from helixflow.router.catalogue import Target
from helixflow.router.router import RoutePlan, Router
from helixflow.router.signals import Outcome
from helixflow.routing_config import RetryConfig
from helixflow.store.telemetry.events import RoutingEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
Attempt = Callable[[Target], Awaitable[T]]


def as_upstream_error(target: Target, exc: HelixFlowError) -> UpstreamError | None:
    """A local engine's error in the router's terms; None for a client's own mistake."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, RateLimitError):
        return UpstreamError(
            f"{target.id} is at capacity: {exc.message}",
            target=target.id,
            status_code=429,
            upstream_status=429,
            retry_after=float(exc.retry_after),
            code=exc.code,
            error_type="rate_limit_error",
        )
    if exc.status_code >= 500:
        return UpstreamError(
            f"{target.id} failed: {exc.message}",
            target=target.id,
            status_code=exc.status_code,
            code=exc.code,
        )
    return None


@dataclass(slots=True)
class Lease(Generic[T]):
    """A target that accepted the request; close it with :meth:`finish` exactly once."""

    router: Router
    plan: RoutePlan
    target: Target
    result: T
    started: float
    attempts: list[dict[str, Any]]
    reason: str
    _open: bool = field(default=True)

    def finish(
        self,
        success: bool,
        *,
        ttft_ms: float | None = None,
        completion_tokens: int = 0,
        error: str | None = None,
    ) -> None:
        if not self._open:
            return
        self._open = False
        outcome = Outcome(
            success=success,
            latency_ms=(time.monotonic() - self.started) * 1000,
            ttft_ms=ttft_ms,
            completion_tokens=completion_tokens,
        )
        self.router.health.end(self.target, outcome, error=error)
        self.router.observe(self.plan, self.target, outcome)

    def abandon(self) -> None:
        """The client left: the attempt says nothing about the target."""
        if self._open:
            self._open = False
            self.router.health.release(self.target)

    @property
    def headers(self) -> dict[str, str]:
        return {
            "x-helixflow-target": self.target.id,
            "x-helixflow-route-reason": _header_safe(self.reason),
        }


def _header_safe(text: str) -> str:
    return text.encode("ascii", "replace").decode()[:300]


class Dispatcher:
    def __init__(
        self,
        router: Router,
        retry: RetryConfig,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._router = router
        self._retry = retry
        self._sleep = sleep

    async def run(
        self, plan: RoutePlan, attempt: Attempt[T], *, request_id: str
    ) -> tuple[Lease[T], RoutingEvent]:
        """The first target in ``plan`` that accepts the request, with the decision record.
        Raises the last error when every target failed."""
        router, health = self._router, self._router.health
        attempts: list[dict[str, Any]] = []
        last: UpstreamError | None = None
        for position, target in enumerate(plan.order):
            delays = backoff_delays(
                self._retry.backoff_s, self._retry.backoff_max_s, self._retry.attempts
            )
            for trial in range(self._retry.attempts):
                if not health.begin(target):
                    attempts.append({"target": target.id, "skipped": "circuit open"})
                    break
                started = time.monotonic()
                try:
                    result = await attempt(target)
                except HelixFlowError as exc:
                    error = as_upstream_error(target, exc)
                    elapsed = (time.monotonic() - started) * 1000
                    if error is None or not error.target_fault:
                        health.release(target)
                        raise
                    self._fail(target, error, elapsed)
                    attempts.append(_attempt_entry(target, error, elapsed))
                    last = error
                    wait = self._wait(error, next(delays), trial)
                    if wait is None:
                        break
                    await self._sleep(wait)
                    continue
                except BaseException:
                    health.release(target)
                    raise
                attempts.append({"target": target.id, "status": "ok", "retry": trial})
                reason = (
                    plan.reason if position == 0 else f"fallback after {plan.order[0].id} failed"
                )
                if position == 0 and trial:
                    reason = f"{plan.reason} (after {trial} retr{'y' if trial == 1 else 'ies'})"
                router.served(plan, target, request_id)
                lease = Lease(router, plan, target, result, started, attempts, reason)
                return lease, self._event(plan, request_id, target, reason, attempts)
        failure = (
            _unavailable(plan, attempts) if last is None else _all_failed(plan, last, attempts)
        )
        event = self._event(plan, request_id, None, failure.message, attempts)
        raise DispatchError(failure, event)

    def _fail(self, target: Target, error: UpstreamError, elapsed_ms: float) -> None:
        health = self._router.health
        if target.local and error.status_code == 429:
            health.release(target)  # a full local queue is load, not a fault
        else:
            health.end(target, Outcome(success=False, latency_ms=elapsed_ms), error=error.message)
        log.info("attempt on %s failed: %s", target.id, error.message)

    def _wait(self, error: UpstreamError, backoff: float, trial: int) -> float | None:
        """Seconds before retrying the same target, or None to move on."""
        if not error.retryable or trial + 1 >= self._retry.attempts:
            return None
        if error.retry_after is not None:
            if error.retry_after > self._retry.retry_after_max_s:
                return None
            return max(error.retry_after, backoff)
        return backoff

    def _event(
        self,
        plan: RoutePlan,
        request_id: str,
        target: Target | None,
        reason: str,
        attempts: list[dict[str, Any]],
    ) -> RoutingEvent:
        return RoutingEvent(
            request_id=request_id,
            strategy=plan.strategy,
            requested_model=plan.requested,
            candidates=plan.candidates,
            chosen_target=target.id if target is not None else None,
            reason=reason,
            fallback_attempts=sum(1 for a in attempts if a.get("status") != "ok"),
            attempts=attempts,
            decision_ms=round(plan.decision_ms, 4),
        )


def _attempt_entry(target: Target, error: UpstreamError, elapsed_ms: float) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "target": target.id,
        "status": error.upstream_status or error.status_code,
        "error": error.code,
        "ms": round(elapsed_ms, 2),
    }
    if error.retry_after is not None:
        entry["retry_after_s"] = error.retry_after
    return entry


class DispatchError(Exception):
    """Every target of a plan failed: ``error`` is for the client, ``event`` for the record."""

    def __init__(self, error: HelixFlowError, event: RoutingEvent) -> None:
        super().__init__(error.message)
        self.error = error
        self.event = event


def _all_failed(
    plan: RoutePlan, last: UpstreamError, attempts: list[dict[str, Any]]
) -> HelixFlowError:
    tried = sorted({a["target"] for a in attempts if "status" in a})
    if len(tried) <= 1:
        return last
    last.message = f"All {len(tried)} targets for '{plan.requested}' failed; last: {last.message}"
    return last


def _unavailable(plan: RoutePlan, attempts: list[dict[str, Any]]) -> HelixFlowError:
    names = ", ".join(a["target"] for a in attempts) or "none"
    return NoTargetAvailableError(
        f"No target for '{plan.requested}' is available right now (open circuits: {names}); "
        "retry shortly.",
        headers={"Retry-After": "1"},
    )
