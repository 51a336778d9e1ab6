"""The circuit breaker: closed -> open -> half-open -> closed, on a hand-moved clock."""

from __future__ import annotations

import pytest

from helixflow.router.breaker import CircuitBreaker
from helixflow.router.signals import CircuitState
from helixflow.routing_config import BreakerConfig
from tests.router.factories import Clock


def breaker(clock: Clock, **config: float) -> CircuitBreaker:
    """A breaker whose failure rate never trips unless the test asks for it."""
    settings: dict[str, float] = {"failure_threshold": 3, "min_requests": 1000, "open_s": 30.0}
    settings.update(config)
    return CircuitBreaker(BreakerConfig.model_validate(settings), clock=clock)


def state(b: CircuitBreaker) -> CircuitState:
    """The state now (a call, so that type checkers do not narrow it between reads)."""
    return b.state


def fail(b: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        b.record(False)


def open_then_half_open(b: CircuitBreaker, clock: Clock) -> None:
    b.force("open")
    clock.advance(30.0)
    assert state(b) == "half_open"


# --- closed -> open --------------------------------------------------------------------------


def test_a_new_breaker_is_closed_and_lets_everything_through() -> None:
    b = breaker(Clock())
    assert state(b) == "closed"
    assert b.transitions == 0
    assert all(b.acquire() for _ in range(100))
    assert b.allows()


def test_consecutive_failures_open_it_at_the_threshold() -> None:
    b = breaker(Clock(), failure_threshold=3)
    fail(b, 2)
    assert state(b) == "closed"
    fail(b, 1)
    assert state(b) == "open"
    assert b.transitions == 1


def test_a_success_resets_the_consecutive_count() -> None:
    b = breaker(Clock(), failure_threshold=3)
    fail(b, 2)
    b.record(True)
    fail(b, 2)
    assert state(b) == "closed"
    fail(b, 1)
    assert state(b) == "open"


def test_the_failure_rate_opens_it_once_min_requests_are_in_the_window() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, min_requests=10, window_s=60.0)
    for _ in range(4):  # F S F S F S F S: 4 of 8, under min_requests
        b.record(False)
        b.record(True)
    assert state(b) == "closed"
    b.record(True)  # 4 of 9
    assert state(b) == "closed"
    b.record(False)  # 5 of 10 = 50%
    assert state(b) == "open"


def test_the_failure_rate_needs_min_requests() -> None:
    b = breaker(Clock(), failure_threshold=100, failure_rate=0.5, min_requests=10)
    for _ in range(9):  # 9 failures in a row, but never 10 outcomes
        b.record(False)
        assert state(b) == "closed"
    b.record(False)
    assert state(b) == "open"


def test_the_failure_rate_only_counts_the_window() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, min_requests=5, window_s=60.0)
    fail(b, 4)  # under min_requests
    clock.advance(61.0)  # those four leave the window
    for _ in range(4):
        b.record(True)
    b.record(False)  # 1 of 5 in the window (it would be 5 of 9 counting the old ones)
    assert state(b) == "closed"
    clock.advance(30.0)
    fail(b, 5)  # 6 of 10 in the window
    assert state(b) == "open"


def test_a_rate_below_the_threshold_keeps_it_closed() -> None:
    b = breaker(Clock(), failure_threshold=100, failure_rate=0.5, min_requests=10)
    for _ in range(10):
        b.record(True)
        b.record(True)
        b.record(False)  # one in three
    assert state(b) == "closed"


# --- open ------------------------------------------------------------------------------------


def test_open_refuses_until_open_s_has_passed() -> None:
    clock = Clock()
    b = breaker(clock, open_s=30.0)
    fail(b, 3)
    assert not b.allows()
    assert not b.acquire()
    clock.advance(29.9)
    assert state(b) == "open"
    assert not b.acquire()
    clock.advance(0.1)
    assert state(b) == "half_open"
    assert b.transitions == 2


def test_outcomes_recorded_while_open_do_not_change_it() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    b.record(True)  # a request sent before it opened, finishing late
    b.record(False)
    assert state(b) == "open"
    assert b.transitions == 1


# --- half-open -------------------------------------------------------------------------------


@pytest.mark.parametrize("trials", [1, 3])
def test_half_open_lets_exactly_half_open_requests_trials_through(trials: int) -> None:
    clock = Clock()
    b = breaker(clock, half_open_requests=trials)
    open_then_half_open(b, clock)
    assert [b.acquire() for _ in range(trials + 2)] == [True] * trials + [False, False]
    assert not b.allows()
    assert state(b) == "half_open"


def test_allows_does_not_take_a_trial_slot() -> None:
    clock = Clock()
    b = breaker(clock, half_open_requests=1)
    open_then_half_open(b, clock)
    assert b.allows()
    assert b.allows()
    assert b.acquire()
    assert not b.allows()


def test_a_trial_success_closes_it() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.advance(30.0)
    assert b.acquire()
    b.record(True)
    assert state(b) == "closed"
    assert b.transitions == 3  # closed -> open -> half_open -> closed
    # closing forgets the past: it takes the full threshold again to open
    fail(b, 2)
    assert state(b) == "closed"


def test_a_trial_failure_reopens_it_for_another_open_s() -> None:
    clock = Clock()
    b = breaker(clock, open_s=30.0)
    fail(b, 3)
    clock.advance(30.0)
    assert b.acquire()
    clock.advance(5.0)
    b.record(False)
    assert state(b) == "open"
    assert b.transitions == 3
    clock.advance(29.0)
    assert state(b) == "open"  # the pause counts from the reopening
    clock.advance(1.0)
    assert state(b) == "half_open"
    assert b.acquire()  # a fresh trial slot


# --- probes and operators --------------------------------------------------------------------


def test_a_successful_probe_moves_open_to_half_open_early() -> None:
    clock = Clock()
    b = breaker(clock, open_s=30.0)
    fail(b, 3)
    b.probe_succeeded()
    assert state(b) == "half_open"
    assert b.acquire()


def test_a_successful_probe_leaves_closed_and_half_open_alone() -> None:
    clock = Clock()
    b = breaker(clock)
    b.probe_succeeded()
    assert state(b) == "closed"
    open_then_half_open(b, clock)
    before = b.transitions
    b.probe_succeeded()
    assert state(b) == "half_open"
    assert b.transitions == before


def test_a_failed_probe_counts_as_a_failure_unless_open() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=2)
    b.probe_failed()
    assert state(b) == "closed"
    b.probe_failed()
    assert state(b) == "open"
    transitions = b.transitions
    b.probe_failed()
    assert state(b) == "open"
    assert b.transitions == transitions


def test_force_open_drains_for_open_s_then_half_opens() -> None:
    clock = Clock()
    b = breaker(clock, open_s=10.0)
    b.force("open")
    assert state(b) == "open"
    assert not b.acquire()
    clock.advance(10.0)
    assert state(b) == "half_open"


def test_force_closed_forgets_past_failures() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=3)
    fail(b, 3)
    b.force("closed")
    assert state(b) == "closed"
    fail(b, 2)
    assert state(b) == "closed"
    fail(b, 1)
    assert state(b) == "open"


def test_force_half_open_offers_a_trial() -> None:
    b = breaker(Clock())
    b.force("half_open")
    assert state(b) == "half_open"
    assert b.acquire()
    assert not b.acquire()


def test_transitions_count_only_changes() -> None:
    clock = Clock()
    b = breaker(clock)
    b.force("closed")
    assert b.transitions == 0
    b.force("open")
    b.force("open")  # already open: the pause restarts, no transition
    assert b.transitions == 1
    clock.advance(30.0)
    assert state(b) == "half_open"
    assert state(b) == "half_open"
    assert b.transitions == 2
    b.force("closed")
    assert b.transitions == 3


def test_release_gives_back_a_trial_slot_without_a_verdict() -> None:
    clock = Clock()
    b = breaker(clock, half_open_requests=1)
    open_then_half_open(b, clock)
    assert b.acquire()
    b.release()
    assert state(b) == "half_open"
    assert b.acquire()  # the slot is free again
    b.release()
    b.release()  # never below zero
    assert b.acquire()
    assert not b.acquire()


def test_release_changes_nothing_when_closed_or_open() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=2)
    b.record(False)
    b.release()
    b.record(False)
    assert state(b) == "open"  # the release did not reset the consecutive count
    b.release()
    assert state(b) == "open"
