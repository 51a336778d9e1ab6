"""The health board: in-flight bookkeeping, smoothed latencies, snapshots, alert windows and
circuit transitions, on a hand-moved clock."""

from __future__ import annotations

import logging

import pytest

from helixflow.router.health import HealthBoard
from helixflow.router.signals import Outcome
from helixflow.routing_config import BreakerConfig
from tests.router.factories import Clock, target

UP = target("acme/m")
LOCAL = target("local/tiny")
BREAKER = BreakerConfig(failure_threshold=2, min_requests=1000, open_s=30.0)


def board(
    clock: Clock,
    *,
    alpha: float = 0.5,
    queue_depth: dict[str, int] | None = None,
    breaker: BreakerConfig = BREAKER,
) -> HealthBoard:
    depths = queue_depth
    return HealthBoard(
        [UP, LOCAL],
        breaker,
        alpha=alpha,
        queue_depth=(lambda t: depths[t.id]) if depths is not None else None,
        clock=clock,
    )


def ok(latency_ms: float, ttft_ms: float | None = None, tokens: int = 0) -> Outcome:
    return Outcome(success=True, latency_ms=latency_ms, ttft_ms=ttft_ms, completion_tokens=tokens)


FAILED = Outcome(success=False, latency_ms=5.0)


# --- in flight -------------------------------------------------------------------------------


def test_begin_end_and_release_count_requests_in_flight() -> None:
    h = board(Clock())
    assert h.begin(UP)
    assert h.begin(UP)
    assert h.begin(LOCAL)
    assert (h[UP.id].in_flight, h[LOCAL.id].in_flight) == (2, 1)
    h.end(UP, ok(10.0))
    assert h[UP.id].in_flight == 1
    h.release(UP)
    assert h[UP.id].in_flight == 0
    h.release(UP)  # never below zero
    h.end(UP, ok(10.0))
    assert h[UP.id].in_flight == 0
    assert h[LOCAL.id].in_flight == 1


def test_begin_is_refused_by_an_open_circuit_and_counts_nothing() -> None:
    h = board(Clock())
    h.force(UP, "open")
    assert not h.begin(UP)
    assert h[UP.id].in_flight == 0
    assert not h.available(UP)
    assert h.available(LOCAL)


def test_end_counts_successes_failures_and_the_last_error() -> None:
    h = board(Clock())
    for _ in range(3):
        h.begin(UP)
        h.end(UP, ok(10.0))
    h.begin(UP)
    h.end(UP, FAILED, error="HTTP 500")
    entry = h[UP.id]
    assert (entry.successes, entry.failures, entry.last_error) == (3, 1, "HTTP 500")


def test_release_says_nothing_of_health() -> None:
    h = board(Clock())
    h.begin(UP)
    h.release(UP)
    entry = h[UP.id]
    assert (entry.successes, entry.failures, entry.ewma_latency_ms) == (0, 0, None)
    assert len(entry.recent) == 0


def test_a_released_half_open_trial_keeps_the_circuit_half_open() -> None:
    """A client that leaves during the trial (a hanging target) proves nothing: the trial slot
    is given back, the circuit stays half-open."""
    clock = Clock()
    h = board(clock)
    h.force(UP, "open")
    clock.advance(30.0)
    assert h.circuit(UP.id) == "half_open"
    assert h.begin(UP)
    assert not h.begin(UP)  # the only trial slot is taken
    h.release(UP)
    assert h.circuit(UP.id) == "half_open"
    assert h.begin(UP)  # free again
    h.end(UP, FAILED)
    assert h.circuit(UP.id) == "open"


# --- smoothed measurements -------------------------------------------------------------------


def test_latency_ewma_starts_at_the_first_sample_then_smooths() -> None:
    h = board(Clock(), alpha=0.5)
    h.begin(UP)
    h.end(UP, ok(100.0))
    assert h[UP.id].ewma_latency_ms == 100.0
    h.begin(UP)
    h.end(UP, ok(200.0))
    assert h[UP.id].ewma_latency_ms == pytest.approx(150.0)
    h.begin(UP)
    h.end(UP, ok(50.0))
    assert h[UP.id].ewma_latency_ms == pytest.approx(100.0)


def test_failures_do_not_move_the_latency() -> None:
    h = board(Clock())
    h.begin(UP)
    h.end(UP, ok(100.0, ttft_ms=20.0))
    h.begin(UP)
    h.end(UP, Outcome(success=False, latency_ms=9000.0, ttft_ms=8000.0))
    assert h[UP.id].ewma_latency_ms == 100.0
    assert h[UP.id].ewma_ttft_ms == 20.0


def test_ttft_and_tokens_per_second() -> None:
    h = board(Clock(), alpha=0.5)
    h.begin(UP)
    # 11 tokens: the first at 100 ms, the other 10 over the next 500 ms -> 20 tokens/s
    h.end(UP, ok(600.0, ttft_ms=100.0, tokens=11))
    assert h[UP.id].ewma_ttft_ms == 100.0
    assert h[UP.id].tokens_per_s == pytest.approx(20.0)
    h.begin(UP)
    # 41 tokens: 40 over 1 s -> 40 tokens/s; smoothed to 30
    h.end(UP, ok(1300.0, ttft_ms=300.0, tokens=41))
    assert h[UP.id].ewma_ttft_ms == pytest.approx(200.0)
    assert h[UP.id].tokens_per_s == pytest.approx(30.0)


@pytest.mark.parametrize(
    "outcome",
    [
        ok(600.0),  # no ttft
        ok(600.0, ttft_ms=100.0, tokens=1),  # one token: no decode time to measure
        ok(100.0, ttft_ms=100.0, tokens=5),  # zero decode time
    ],
)
def test_tokens_per_second_needs_a_measurable_decode(outcome: Outcome) -> None:
    h = board(Clock())
    h.begin(UP)
    h.end(UP, outcome)
    assert h[UP.id].tokens_per_s is None


# --- snapshots -------------------------------------------------------------------------------


def test_stats_is_a_snapshot_of_the_target() -> None:
    clock = Clock()
    h = board(clock, alpha=1.0, queue_depth={UP.id: 7, LOCAL.id: 4})
    h.begin(UP)
    h.end(UP, ok(600.0, ttft_ms=100.0, tokens=11))
    h.begin(UP)
    h.end(UP, FAILED)
    h.begin(UP)
    stats = h.stats(UP)
    assert stats.target is UP
    assert stats.in_flight == 1
    assert stats.queue_depth == 0  # only local engines have a queue
    assert (stats.ewma_latency_ms, stats.ewma_ttft_ms) == (600.0, 100.0)
    assert stats.tokens_per_s == pytest.approx(20.0)
    assert (stats.successes, stats.failures, stats.circuit) == (1, 1, "closed")
    h.end(UP, ok(10.0))
    assert stats.in_flight == 1  # a snapshot, not a live view
    local = h.stats(LOCAL)
    assert local.queue_depth == 4
    assert local.outstanding == 4


def test_stats_without_a_queue_depth_source() -> None:
    h = board(Clock())
    h.begin(LOCAL)
    assert h.stats(LOCAL).queue_depth == 0
    assert h.stats(LOCAL).outstanding == 1


def test_stats_shows_the_circuit() -> None:
    h = board(Clock())
    h.begin(UP)
    h.end(UP, FAILED)
    h.begin(UP)
    h.end(UP, FAILED)
    assert h.stats(UP).circuit == "open"
    assert h.circuit(UP.id) == "open"


# --- alert windows ---------------------------------------------------------------------------


def test_windows_count_requests_and_errors_in_the_window() -> None:
    clock = Clock()
    h = board(clock, breaker=BreakerConfig(failure_threshold=100, min_requests=1000))
    h.begin(UP)
    h.end(UP, FAILED)  # at t=1000: leaves the window
    clock.advance(100.0)
    for _ in range(3):
        h.begin(UP)
        h.end(UP, ok(10.0))
    h.begin(UP)
    h.end(UP, FAILED)
    h.begin(UP)
    h.release(UP)  # not an outcome
    clock.advance(10.0)
    windows = {w.target: w for w in h.windows(60.0)}
    assert set(windows) == {UP.id, LOCAL.id}
    assert (windows[UP.id].requests, windows[UP.id].errors) == (4, 1)
    assert windows[UP.id].circuit == "closed"
    assert (windows[LOCAL.id].requests, windows[LOCAL.id].errors) == (0, 0)
    assert windows[LOCAL.id].latency_p95_ms is None
    wide = {w.target: w for w in h.windows(200.0)}
    assert (wide[UP.id].requests, wide[UP.id].errors) == (5, 2)


def test_window_p95_is_the_nearest_rank_of_successful_latencies() -> None:
    clock = Clock()
    h = board(clock, breaker=BreakerConfig(failure_threshold=100, min_requests=1000))
    for ms in range(100, 0, -1):  # 1..100 ms, in reverse order
        h.begin(UP)
        h.end(UP, ok(float(ms)))
    h.begin(UP)
    h.end(UP, Outcome(success=False, latency_ms=99_999.0))  # failures have no latency
    (up,) = [w for w in h.windows(60.0) if w.target == UP.id]
    assert up.latency_p95_ms == 95.0
    assert up.requests == 101


def test_window_p95_of_old_latencies_is_dropped() -> None:
    clock = Clock()
    h = board(clock)
    h.begin(UP)
    h.end(UP, ok(5000.0))
    clock.advance(61.0)
    h.begin(UP)
    h.end(UP, ok(10.0))
    (up,) = [w for w in h.windows(60.0) if w.target == UP.id]
    assert up.latency_p95_ms == 10.0
    assert up.requests == 1


def test_windows_show_an_open_circuit() -> None:
    h = board(Clock())
    h.force(LOCAL, "open")
    circuits = {w.target: w.circuit for w in h.windows(60.0)}
    assert circuits == {UP.id: "closed", LOCAL.id: "open"}


# --- probes and transitions ------------------------------------------------------------------


def test_probed_records_the_result_and_moves_the_circuit() -> None:
    h = board(Clock())
    assert h[UP.id].probe_ok is None
    h.probed(UP, True)
    assert h[UP.id].probe_ok is True
    h.probed(UP, False, "connection refused")
    assert h[UP.id].probe_ok is False
    assert h[UP.id].last_error == "connection refused"
    assert h.circuit(UP.id) == "closed"
    h.probed(UP, False, "connection refused")  # threshold 2: a failed probe counts
    assert h.circuit(UP.id) == "open"
    h.probed(UP, True)  # a successful probe offers a trial at once
    assert h.circuit(UP.id) == "half_open"
    assert h.begin(UP)


def test_an_opening_circuit_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    h = board(Clock())
    caplog.set_level(logging.INFO, logger="helixflow.router.health")
    h.begin(UP)
    h.end(UP, FAILED, error="HTTP 503")
    assert not caplog.records
    h.begin(UP)
    h.end(UP, FAILED, error="HTTP 502")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "acme/m" in message
    assert "closed -> open" in message
    assert "HTTP 502" in message


def test_other_transitions_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    h = board(Clock())
    h.force(UP, "open")
    caplog.set_level(logging.INFO, logger="helixflow.router.health")
    caplog.clear()
    h.probed(UP, True)
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert "open -> half_open" in record.getMessage()
    caplog.clear()
    assert h.begin(UP)
    h.end(UP, ok(10.0))
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert "half_open -> closed" in record.getMessage()


def test_force_is_logged_with_the_transition(caplog: pytest.LogCaptureFixture) -> None:
    h = board(Clock())
    caplog.set_level(logging.INFO, logger="helixflow.router.health")
    h.force(UP, "open")
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.WARNING, "circuit of acme/m forced open by an operator") in messages
    assert any(level == logging.WARNING and "closed -> open" in m for level, m in messages)


def test_iteration_covers_every_target() -> None:
    h = board(Clock())
    assert [entry.target.id for entry in h] == [UP.id, LOCAL.id]
