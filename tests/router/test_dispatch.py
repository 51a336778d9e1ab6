"""The dispatcher: retries, Retry-After, fallbacks, the decision record and leases, with a
scripted attempt function and a sleep that only records its delays."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from helixflow.errors import (
    EngineError,
    HelixFlowError,
    InvalidRequestError,
    NoTargetAvailableError,
    QueueFullError,
    UpstreamError,
)
from helixflow.router.catalogue import Catalogue, Target
from helixflow.router.dispatch import Dispatcher, DispatchError, Lease
from helixflow.router.health import HealthBoard
from helixflow.router.router import RequestNeeds, RoutePlan, Router
from helixflow.router.strategies import AdaptiveStrategy, Strategy
from helixflow.routing_config import BreakerConfig, GroupConfig, RetryConfig, RouterConfig
from helixflow.store.telemetry.events import RoutingEvent
from tests.router.factories import StrategyFactory, target

CHAT = RequestNeeds(capabilities=frozenset({"chat"}))
CAPABILITIES = ("chat", "completions")

# acme/main falls back to backup/spare, then to local/tiny.
TARGETS = [
    target("acme/main", capabilities=CAPABILITIES, fallbacks=("backup/spare", "local/tiny")),
    target("backup/spare", capabilities=CAPABILITIES),
    target("local/tiny", capabilities=CAPABILITIES, fallbacks=("backup/spare",)),
]


def fault(
    target_id: str,
    status: int = 503,
    *,
    retryable: bool = True,
    target_fault: bool = True,
    retry_after: float | None = None,
) -> UpstreamError:
    return UpstreamError(
        f"{target_id} answered HTTP {status}",
        target=target_id,
        status_code=502 if status >= 500 else status,
        upstream_status=status,
        retryable=retryable,
        target_fault=target_fault,
        retry_after=retry_after,
        code="upstream_rate_limited" if status == 429 else "upstream_error",
        error_type="rate_limit_error" if status == 429 else None,
    )


@dataclass
class Script:
    """What each target does on each call, in order: an exception to raise or a result. A
    target with nothing left answers ``"ok from <id>"``."""

    steps: dict[str, list[BaseException | str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    async def __call__(self, t: Target) -> str:
        self.calls.append(t.id)
        queue = self.steps.get(t.id, [])
        step = queue.pop(0) if queue else f"ok from {t.id}"
        if isinstance(step, BaseException):
            raise step
        return step


@dataclass
class Sleeps:
    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass
class Setup:
    router: Router
    dispatcher: Dispatcher
    sleeps: Sleeps
    retry: RetryConfig
    strategies: list[Strategy]

    @property
    def health(self) -> HealthBoard:
        return self.router.health

    def target(self, target_id: str) -> Target:
        return self.router.catalogue.targets[target_id]

    def plan(self, requested: str = "acme/main") -> RoutePlan:
        return self.router.plan(requested, CHAT)

    async def run(
        self, script: Script, requested: str = "acme/main", request_id: str = "req-1"
    ) -> tuple[Lease[str], RoutingEvent]:
        return await self.dispatcher.run(self.plan(requested), script, request_id=request_id)

    async def fail(self, script: Script, requested: str = "acme/main") -> DispatchError:
        with pytest.raises(DispatchError) as caught:
            await self.run(script, requested)
        return caught.value


def setup(
    *,
    attempts: int = 2,
    backoff_s: float = 0.1,
    retry_after_max_s: float = 5.0,
    breaker: BreakerConfig | None = None,
    groups: Iterable[GroupConfig] = (),
) -> Setup:
    retry = RetryConfig(
        attempts=attempts,
        backoff_s=backoff_s,
        backoff_max_s=10.0,
        retry_after_max_s=retry_after_max_s,
    )
    config = RouterConfig(
        groups=list(groups),
        retry=retry,
        breaker=breaker or BreakerConfig(failure_threshold=100, min_requests=1000),
    )
    catalogue = Catalogue(TARGETS, config.groups)
    factory = StrategyFactory(seed=7)
    health = HealthBoard(catalogue, config.breaker)
    router = Router(catalogue, health, config, strategy_factory=factory)
    sleeps = Sleeps()
    return Setup(router, Dispatcher(router, retry, sleep=sleeps), sleeps, retry, factory.made)


def in_flight(s: Setup) -> dict[str, int]:
    return {h.target.id: h.in_flight for h in s.health}


# --- success ---------------------------------------------------------------------------------


async def test_the_first_target_answers() -> None:
    s = setup()
    script = Script()
    lease, event = await s.run(script)
    assert script.calls == ["acme/main"]
    assert lease.result == "ok from acme/main"
    assert lease.target.id == "acme/main"
    assert lease.reason == "requested"
    assert lease.headers == {
        "x-helixflow-target": "acme/main",
        "x-helixflow-route-reason": "requested",
    }
    assert event.request_id == "req-1"
    assert event.chosen_target == "acme/main"
    assert event.requested_model == "acme/main"
    assert event.strategy == "direct"
    assert event.reason == "requested"
    assert event.attempts == [{"target": "acme/main", "status": "ok", "retry": 0}]
    assert event.fallback_attempts == 0
    assert event.candidates is not None
    assert event.candidates[0]["target"] == "acme/main"
    assert s.sleeps.delays == []
    assert in_flight(s)["acme/main"] == 1  # until the lease is closed


async def test_the_route_reason_header_is_ascii_and_bounded() -> None:
    s = setup()
    lease, _ = await s.run(Script())
    lease.reason = "é" + "x" * 400
    header = lease.headers["x-helixflow-route-reason"]
    assert header.startswith("?x")
    assert len(header) == 300


# --- retries on the same target --------------------------------------------------------------


async def test_a_retryable_failure_is_retried_on_the_same_target_with_backoff() -> None:
    s = setup(attempts=3, backoff_s=0.1)
    script = Script({"acme/main": [fault("acme/main", 503), fault("acme/main", 500)]})
    lease, event = await s.run(script)
    assert script.calls == ["acme/main"] * 3
    assert lease.target.id == "acme/main"
    assert lease.reason == "requested (after 2 retries)"
    first, second = s.sleeps.delays
    assert 0.05 <= first <= 0.1  # base, with up to half of it as jitter
    assert 0.1 <= second <= 0.2  # doubled
    assert event.fallback_attempts == 2
    assert event.attempts is not None
    assert [a["status"] for a in event.attempts] == [503, 500, "ok"]
    assert event.attempts[0]["error"] == "upstream_error"
    assert event.attempts[-1] == {"target": "acme/main", "status": "ok", "retry": 2}
    health = s.health["acme/main"]
    assert (health.failures, health.in_flight) == (2, 1)


async def test_one_retry_says_retry() -> None:
    s = setup(attempts=2)
    lease, _ = await s.run(Script({"acme/main": [fault("acme/main")]}))
    assert lease.reason == "requested (after 1 retry)"


async def test_retries_stop_at_attempts_then_the_fallback_is_tried() -> None:
    s = setup(attempts=3)
    script = Script({"acme/main": [fault("acme/main")] * 3})
    lease, event = await s.run(script)
    assert script.calls == ["acme/main"] * 3 + ["backup/spare"]
    assert len(s.sleeps.delays) == 2  # no sleep after the last try of a target
    assert lease.target.id == "backup/spare"
    assert lease.reason == "fallback after acme/main failed"
    assert event.chosen_target == "backup/spare"
    assert event.reason == "fallback after acme/main failed"
    assert event.fallback_attempts == 3
    assert event.attempts is not None
    assert [a["target"] for a in event.attempts] == ["acme/main"] * 3 + ["backup/spare"]


async def test_retry_after_is_slept_when_it_is_short_enough() -> None:
    s = setup(attempts=2, backoff_s=0.1, retry_after_max_s=5.0)
    script = Script({"acme/main": [fault("acme/main", 429, retry_after=2.5)]})
    lease, event = await s.run(script)
    assert s.sleeps.delays == [2.5]
    assert lease.target.id == "acme/main"
    assert event.attempts is not None
    assert event.attempts[0]["retry_after_s"] == 2.5


async def test_a_retry_after_shorter_than_the_backoff_waits_the_backoff() -> None:
    s = setup(attempts=2, backoff_s=1.0)
    await s.run(Script({"acme/main": [fault("acme/main", 429, retry_after=0.01)]}))
    (delay,) = s.sleeps.delays
    assert 0.5 <= delay <= 1.0


async def test_a_retry_after_over_the_limit_moves_on_at_once() -> None:
    s = setup(attempts=3, retry_after_max_s=5.0)
    script = Script({"acme/main": [fault("acme/main", 429, retry_after=60.0)]})
    lease, _ = await s.run(script)
    assert script.calls == ["acme/main", "backup/spare"]
    assert s.sleeps.delays == []
    assert lease.target.id == "backup/spare"


async def test_a_non_retryable_target_fault_falls_back_without_a_retry() -> None:
    s = setup(attempts=3)
    script = Script({"acme/main": [fault("acme/main", 401, retryable=False)]})
    lease, _ = await s.run(script)
    assert script.calls == ["acme/main", "backup/spare"]
    assert s.sleeps.delays == []
    assert lease.target.id == "backup/spare"
    assert s.health["acme/main"].failures == 1


# --- errors that are not the target's --------------------------------------------------------


async def test_a_refused_request_is_raised_at_once_without_fallback() -> None:
    s = setup(attempts=3)
    refused = fault("acme/main", 400, retryable=False, target_fault=False)
    script = Script({"acme/main": [refused]})
    with pytest.raises(UpstreamError) as caught:
        await s.run(script)
    assert caught.value is refused
    assert script.calls == ["acme/main"]
    assert s.sleeps.delays == []
    health = s.health["acme/main"]
    assert (health.in_flight, health.failures, health.successes) == (0, 0, 0)


async def test_a_local_client_error_is_raised_as_it_is() -> None:
    s = setup()
    script = Script({"local/tiny": [InvalidRequestError("bad max_tokens", param="max_tokens")]})
    with pytest.raises(InvalidRequestError, match="bad max_tokens"):
        await s.run(script, "local/tiny")
    assert script.calls == ["local/tiny"]
    assert in_flight(s)["local/tiny"] == 0


@pytest.mark.parametrize("exc", [RuntimeError("bug"), asyncio.CancelledError()])
async def test_any_other_exception_releases_the_target_and_propagates(
    exc: BaseException,
) -> None:
    s = setup()
    with pytest.raises(type(exc)):
        await s.run(Script({"acme/main": [exc]}))
    health = s.health["acme/main"]
    assert (health.in_flight, health.failures) == (0, 0)


async def test_a_cancelled_half_open_trial_leaves_the_circuit_half_open() -> None:
    """The client left while the trial request hung: nothing was learnt about the target."""
    s = setup()
    s.health.force(s.target("acme/main"), "half_open")
    plan = s.plan()
    with pytest.raises(asyncio.CancelledError):
        await s.dispatcher.run(
            plan, Script({"acme/main": [asyncio.CancelledError()]}), request_id="r"
        )
    assert s.health.circuit("acme/main") == "half_open"
    assert s.health.available(s.target("acme/main"))


# --- local targets ---------------------------------------------------------------------------


async def test_a_full_local_queue_is_load_not_a_fault() -> None:
    s = setup(attempts=2)
    full = QueueFullError("tiny", 4, retry_after=1)
    script = Script({"local/tiny": [full, QueueFullError("tiny", 4, retry_after=1)]})
    lease, event = await s.run(script, "local/tiny")
    assert script.calls == ["local/tiny", "local/tiny", "backup/spare"]
    assert s.sleeps.delays == [1.0]  # its Retry-After
    assert lease.target.id == "backup/spare"
    tiny = s.health["local/tiny"]
    assert (tiny.in_flight, tiny.failures, tiny.successes) == (0, 0, 0)
    assert tiny.breaker.transitions == 0
    assert event.attempts is not None
    assert event.attempts[0] == {
        "target": "local/tiny",
        "status": 429,
        "error": "queue_full",
        "ms": event.attempts[0]["ms"],
        "retry_after_s": 1.0,
    }


async def test_a_full_queue_then_a_rate_limited_fallback_is_a_429() -> None:
    s = setup(attempts=1)
    script = Script(
        {
            "local/tiny": [QueueFullError("tiny", 4, retry_after=2)],
            "backup/spare": [fault("backup/spare", 429, retry_after=30.0)],
        }
    )
    failed = await s.fail(script, "local/tiny")
    error = failed.error
    assert isinstance(error, UpstreamError)
    assert error.status_code == 429
    assert error.error_type == "rate_limit_error"
    assert error.message.startswith("All 2 targets for 'local/tiny' failed; last: backup")
    assert failed.event.attempts is not None
    assert [a["error"] for a in failed.event.attempts] == ["queue_full", "upstream_rate_limited"]
    assert s.sleeps.delays == []


async def test_a_local_engine_failure_counts_against_it() -> None:
    s = setup(attempts=1)
    script = Script({"local/tiny": [EngineError("decode failed")]})
    lease, event = await s.run(script, "local/tiny")
    assert lease.target.id == "backup/spare"
    tiny = s.health["local/tiny"]
    assert (tiny.in_flight, tiny.failures) == (0, 1)
    assert tiny.last_error == "local/tiny failed: decode failed"
    assert event.attempts is not None
    assert event.attempts[0]["status"] == 500
    assert event.attempts[0]["error"] == "engine_error"


# --- when everything fails -------------------------------------------------------------------


async def test_every_target_failing_is_a_dispatch_error_naming_them() -> None:
    s = setup(attempts=2)
    script = Script(
        {
            "acme/main": [fault("acme/main", 500)] * 2,
            "backup/spare": [fault("backup/spare", 502)] * 2,
            "local/tiny": [EngineError("boom")] * 2,
        }
    )
    failed = await s.fail(script)
    assert script.calls == ["acme/main"] * 2 + ["backup/spare"] * 2 + ["local/tiny"] * 2
    error = failed.error
    assert isinstance(error, UpstreamError)
    assert error.message.startswith("All 3 targets for 'acme/main' failed; last: local/tiny")
    assert str(failed) == error.message
    event = failed.event
    assert event.chosen_target is None
    assert event.reason == error.message
    assert event.fallback_attempts == 6
    assert event.attempts is not None
    assert len(event.attempts) == 6
    assert all(n == 0 for n in in_flight(s).values())


async def test_a_single_failing_target_keeps_its_own_message() -> None:
    s = setup(attempts=1)
    s.health.force(s.target("backup/spare"), "open")
    s.health.force(s.target("local/tiny"), "open")
    plan = s.plan()
    assert [t.id for t in plan.order] == ["acme/main"]
    with pytest.raises(DispatchError) as caught:
        await s.dispatcher.run(plan, Script({"acme/main": [fault("acme/main")]}), request_id="r")
    assert caught.value.error.message == "acme/main answered HTTP 503"


async def test_every_circuit_open_is_no_target_available() -> None:
    s = setup()
    plan = s.plan()
    for t in plan.order:  # they opened after the plan was made
        s.health.force(t, "open")
    script = Script()
    with pytest.raises(DispatchError) as caught:
        await s.dispatcher.run(plan, script, request_id="r")
    assert script.calls == []
    error = caught.value.error
    assert isinstance(error, NoTargetAvailableError)
    assert error.status_code == 503
    assert error.headers == {"Retry-After": "1"}
    assert "acme/main, backup/spare, local/tiny" in error.message
    event = caught.value.event
    assert event.chosen_target is None
    assert event.attempts == [
        {"target": "acme/main", "skipped": "circuit open"},
        {"target": "backup/spare", "skipped": "circuit open"},
        {"target": "local/tiny", "skipped": "circuit open"},
    ]
    assert event.fallback_attempts == 3


async def test_a_circuit_that_opens_during_the_retries_stops_them() -> None:
    s = setup(attempts=3, breaker=BreakerConfig(failure_threshold=1, min_requests=1000))
    script = Script({"acme/main": [fault("acme/main")]})
    lease, event = await s.run(script)
    assert script.calls == ["acme/main", "backup/spare"]
    assert event.attempts is not None
    assert event.attempts[1] == {"target": "acme/main", "skipped": "circuit open"}
    assert lease.target.id == "backup/spare"


# --- leases ----------------------------------------------------------------------------------


async def test_finish_updates_health_once() -> None:
    s = setup()
    lease, _ = await s.run(Script())
    lease.finish(True, ttft_ms=5.0, completion_tokens=3)
    health = s.health["acme/main"]
    assert (health.in_flight, health.successes, health.failures) == (0, 1, 0)
    assert health.ewma_latency_ms is not None
    assert health.ewma_ttft_ms == 5.0
    lease.finish(False, error="late")
    lease.abandon()
    assert (health.in_flight, health.successes, health.failures) == (0, 1, 0)
    assert health.last_error is None


async def test_a_failed_finish_counts_against_the_target() -> None:
    s = setup()
    lease, _ = await s.run(Script())
    lease.finish(False, error="stream cut")
    health = s.health["acme/main"]
    assert (health.in_flight, health.successes, health.failures) == (0, 0, 1)
    assert health.last_error == "stream cut"


async def test_abandon_releases_without_a_verdict() -> None:
    s = setup()
    lease, _ = await s.run(Script())
    lease.abandon()
    health = s.health["acme/main"]
    assert (health.in_flight, health.successes, health.failures) == (0, 0, 0)
    lease.finish(True)
    assert health.successes == 0


async def test_finish_teaches_the_strategy_and_feedback_finds_the_target() -> None:
    group = GroupConfig(name="smart", targets=["acme/main", "backup/spare"], strategy="adaptive")
    s = setup(groups=[group])
    lease, event = await s.run(Script(), "smart", request_id="req-42")
    (strategy,) = s.strategies
    assert isinstance(strategy, AdaptiveStrategy)
    assert event.strategy == "adaptive"
    chosen = lease.target.id
    lease.finish(True)
    assert strategy.posterior(chosen) == pytest.approx((2.0, 1.0))
    assert s.router.feedback("req-42", 0.0) == chosen
    assert strategy.posterior(chosen) == pytest.approx((2.0, 2.0))


async def test_a_failed_dispatch_is_not_remembered_for_feedback() -> None:
    s = setup(attempts=1)
    script = Script({t.id: [fault(t.id)] for t in TARGETS})
    await s.fail(script)
    assert s.router.feedback("req-1", 1.0) is None


def test_dispatch_error_carries_the_error_and_the_event() -> None:
    error: HelixFlowError = NoTargetAvailableError("none")
    event = RoutingEvent(request_id="r", strategy="direct")
    failed = DispatchError(error, event)
    assert (failed.error, failed.event, str(failed)) == (error, event, "none")
