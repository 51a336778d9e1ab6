"""Alert rules over crafted windows, and the monitor: cooldown, resolution, log, webhook, store."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from helixflow.router.alerts import (
    RULES,
    AlertMonitor,
    AlertRecord,
    AlertRule,
    ErrorRateRule,
    Firing,
    LatencyP95Rule,
    OpenCircuitsRule,
    TargetWindow,
    default_rules,
)
from helixflow.routing_config import AlertConfig
from helixflow.store.database import Database
from helixflow.store.repositories.alerts import AlertRepository
from tests.router.factories import Clock

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CONFIG = AlertConfig(
    min_requests=10, error_rate=0.2, latency_p95_ms=1000.0, open_circuits=2, cooldown_s=60.0
)


def window(
    target: str = "acme/m",
    requests: int = 100,
    errors: int = 0,
    p95: float | None = 100.0,
    circuit: str = "closed",
) -> TargetWindow:
    return TargetWindow(
        target=target,
        requests=requests,
        errors=errors,
        latency_p95_ms=p95,
        circuit=circuit,  # type: ignore[arg-type]
    )


class FakeClock(Clock):
    """Monotonic seconds and wall time (T0 at the start), moved by hand."""

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.t - 1000.0)


@dataclass
class Board:
    """What the health board would report; tests set ``current``."""

    current: list[TargetWindow] = field(default_factory=list)
    asked: list[float] = field(default_factory=list)

    def __call__(self, window_s: float) -> Sequence[TargetWindow]:
        self.asked.append(window_s)
        return self.current


def monitor(
    board: Board,
    clock: FakeClock,
    config: AlertConfig = CONFIG,
    repository: AlertRepository | None = None,
    rules: Sequence[AlertRule] | None = None,
) -> AlertMonitor:
    return AlertMonitor(config, board, repository, clock=clock, now=clock.now, rules=rules)


# --- rules -----------------------------------------------------------------------------------


def test_rules_are_registered_by_name() -> None:
    assert set(RULES) == {"error_rate", "latency_p95", "open_circuits"}
    assert RULES["error_rate"] is ErrorRateRule
    assert [r.name for r in default_rules()] == list(RULES)
    with pytest.raises(TypeError):
        RULES["mine"] = ErrorRateRule  # type: ignore[index]


def test_error_rate() -> None:
    rule = ErrorRateRule()
    windows = [
        window("quiet", requests=9, errors=9),  # too few requests to count
        window("fine", requests=100, errors=19),
        window("edge", requests=10, errors=2),  # exactly the threshold, exactly min_requests
        window("bad", requests=50, errors=20),
        window("down", requests=20, errors=20),
    ]
    found = {str(f.target): f for f in rule.evaluate(windows, CONFIG)}
    assert sorted(found) == ["bad", "down", "edge"]
    assert found["edge"].severity == "warning"
    assert found["edge"].value == pytest.approx(0.2)
    assert found["edge"].threshold == pytest.approx(0.2)
    assert found["bad"].severity == "critical"  # 40%: twice the threshold
    assert found["bad"].details == {"requests": 50, "errors": 20, "circuit": "closed"}
    assert "40.0%" in found["bad"].message
    assert found["down"].value == 1.0
    assert rule.evaluate([window(requests=0, errors=0)], CONFIG) == []


def test_error_rate_critical_is_capped_at_one() -> None:
    config = CONFIG.model_copy(update={"error_rate": 0.8})
    (firing,) = ErrorRateRule().evaluate([window(requests=10, errors=10)], config)
    assert firing.severity == "critical"
    (firing,) = ErrorRateRule().evaluate([window(requests=10, errors=9)], config)
    assert firing.severity == "warning"


def test_latency_p95() -> None:
    rule = LatencyP95Rule()
    windows = [
        window("quiet", requests=5, p95=50_000.0),
        window("none", requests=100, errors=100, p95=None),
        window("fast", p95=999.0),
        window("slow", p95=1000.0),
        window("crawl", p95=2500.0),
    ]
    found = {str(f.target): f for f in rule.evaluate(windows, CONFIG)}
    assert sorted(found) == ["crawl", "slow"]
    assert (found["slow"].severity, found["slow"].value) == ("warning", 1000.0)
    assert (found["crawl"].severity, found["crawl"].value) == ("critical", 2500.0)
    assert found["crawl"].threshold == 1000.0
    assert found["crawl"].rule == "latency_p95"


def test_open_circuits() -> None:
    rule = OpenCircuitsRule()
    one_open = [window("a", circuit="open"), window("b", circuit="half_open"), window("c")]
    assert rule.evaluate(one_open, CONFIG) == []  # threshold 2; half-open does not count
    two_open = [*one_open, window("d", requests=0, p95=None, circuit="open")]
    (firing,) = rule.evaluate(two_open, CONFIG)
    assert firing.target is None
    assert (firing.value, firing.threshold, firing.severity) == (2.0, 2.0, "warning")
    assert firing.details["targets"] == ["a", "d"]
    assert firing.details["half_open"] == ["b"]
    all_open = [window("a", circuit="open"), window("b", circuit="open")]
    (firing,) = rule.evaluate(all_open, CONFIG)
    assert firing.severity == "critical"


# --- monitor ---------------------------------------------------------------------------------


async def test_fires_once_then_resolves_with_cooldown() -> None:
    board, clock = Board(), FakeClock()
    m = monitor(board, clock)
    assert await m.check_once() == []
    assert board.asked == [CONFIG.window_s]

    board.current = [window("acme/m", requests=20, errors=10)]
    (fired,) = await m.check_once()
    assert (fired.rule, fired.target, fired.state) == ("error_rate", "acme/m", "firing")
    assert fired.value == pytest.approx(0.5)
    assert fired.created_at == T0
    assert fired.id is None  # no repository
    assert m.active == [fired]

    clock.advance(10)
    assert await m.check_once() == []  # still firing: not again

    clock.advance(10)
    board.current = [window("acme/m", requests=20, errors=0)]
    (resolved,) = await m.check_once()
    assert (resolved.state, resolved.rule, resolved.target) == ("resolved", "error_rate", "acme/m")
    assert resolved.resolved_at == T0 + timedelta(seconds=20)
    assert resolved.created_at == T0
    assert m.active == []

    board.current = [window("acme/m", requests=20, errors=10)]
    clock.advance(10)  # 30 s after it fired: inside the 60 s cooldown
    assert await m.check_once() == []
    assert m.active == []
    clock.advance(30)  # 60 s after it fired
    (again,) = await m.check_once()
    assert again.state == "firing"
    assert again.created_at == T0 + timedelta(seconds=60)


async def test_cooldown_is_per_rule_and_target() -> None:
    board, clock = Board(), FakeClock()
    m = monitor(board, clock)
    board.current = [window("a", requests=20, errors=10)]
    assert [a.target for a in await m.check_once()] == ["a"]
    board.current = [window("b", requests=20, errors=10, p95=5000.0)]
    changed = await m.check_once()
    assert sorted((a.rule, a.target, a.state) for a in changed) == [
        ("error_rate", "a", "resolved"),
        ("error_rate", "b", "firing"),
        ("latency_p95", "b", "firing"),
    ]


async def test_no_cooldown_fires_again_at_once() -> None:
    board, clock = Board(), FakeClock()
    m = monitor(board, clock, CONFIG.model_copy(update={"cooldown_s": 0.0}))
    bad, good = [window(requests=20, errors=10)], [window(requests=20)]
    for current, state in [(bad, "firing"), (good, "resolved"), (bad, "firing")]:
        board.current = current
        assert [a.state for a in await m.check_once()] == [state]


async def test_too_few_requests_clears_the_condition() -> None:
    board, clock = Board(), FakeClock()
    m = monitor(board, clock)
    board.current = [window(requests=20, errors=20, p95=None)]
    assert [a.rule for a in await m.check_once()] == ["error_rate"]
    board.current = [window(requests=3, errors=3, p95=None)]
    assert [(a.rule, a.state) for a in await m.check_once()] == [("error_rate", "resolved")]


async def test_open_circuits_fire_once_while_the_set_changes() -> None:
    board, clock = Board(), FakeClock()
    m = monitor(board, clock)
    board.current = [window("a", circuit="open"), window("b", circuit="open"), window("c")]
    (fired,) = await m.check_once()
    assert (fired.rule, fired.target) == ("open_circuits", None)
    assert fired.details["targets"] == ["a", "b"]
    board.current = [window("a", circuit="open"), window("b"), window("c", circuit="open")]
    assert await m.check_once() == []
    board.current = [window("a", circuit="open"), window("b"), window("c", circuit="half_open")]
    (resolved,) = await m.check_once()
    assert (resolved.rule, resolved.state) == ("open_circuits", "resolved")


async def test_logs_firing_at_warning_and_resolution_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    board, clock = Board(), FakeClock()
    m = monitor(board, clock)
    caplog.set_level(logging.INFO, logger="helixflow.router.alerts")
    board.current = [window("acme/slow", p95=1500.0)]
    await m.check_once()
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = record.getMessage()
    for part in ("latency_p95", "acme/slow", "1500", "1000"):
        assert part in text
    caplog.clear()
    board.current = [window("acme/slow", p95=10.0)]
    await m.check_once()
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert "resolved" in record.getMessage()
    assert "acme/slow" in record.getMessage()


class BrokenRule(AlertRule):
    name = "broken"

    def __init__(self) -> None:
        self.fail = False

    def evaluate(self, windows: Sequence[TargetWindow], config: AlertConfig) -> list[Firing]:
        if self.fail:
            raise RuntimeError("rule bug")
        return [Firing("broken", "x", "warning", 1.0, 1.0, "always")]


async def test_a_failing_rule_is_logged_and_keeps_its_alerts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    board, clock = Board(), FakeClock()
    broken = BrokenRule()
    m = monitor(board, clock, rules=[broken, ErrorRateRule()])
    board.current = [window(requests=20, errors=10)]
    assert sorted(a.rule for a in await m.check_once()) == ["broken", "error_rate"]
    broken.fail = True
    board.current = [window(requests=20, errors=0)]
    changed = await m.check_once()
    # the error-rate alert resolved; the broken rule's alert stays: its condition is unknown
    assert [(a.rule, a.state) for a in changed] == [("error_rate", "resolved")]
    assert [a.rule for a in m.active] == ["broken"]
    assert any("rule bug" in (r.exc_text or "") for r in caplog.records)


# --- webhook ---------------------------------------------------------------------------------


@dataclass
class Hook:
    url: str
    bodies: list[dict[str, Any]]


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    """A real HTTP server that records what is POSTed to /hook (and fails on /broken)."""
    bodies: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({"ok": True})

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="nope")

    app = web.Application()
    app.router.add_post("/hook", receive)
    app.router.add_post("/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Hook(f"http://127.0.0.1:{port}", bodies)
    finally:
        await runner.cleanup()


async def test_webhook_receives_firing_and_resolved(hook: Hook) -> None:
    board, clock = Board(), FakeClock()
    config = CONFIG.model_copy(update={"webhook_url": f"{hook.url}/hook"})
    m = monitor(board, clock, config)
    try:
        board.current = [window("acme/m", requests=20, errors=10)]
        await m.check_once()
        board.current = [window("acme/m", requests=20)]
        await m.check_once()
    finally:
        await m.stop()
    assert [b["alert"]["state"] for b in hook.bodies] == ["firing", "resolved"]
    fired = hook.bodies[0]
    assert fired["source"] == "helixflow"
    alert = fired["alert"]
    assert (alert["rule"], alert["target"], alert["severity"]) == (
        "error_rate",
        "acme/m",
        "critical",
    )
    assert alert["value"] == pytest.approx(0.5)
    assert alert["threshold"] == pytest.approx(0.2)
    assert alert["details"]["errors"] == 10
    assert datetime.fromisoformat(alert["created_at"]) == T0
    assert alert["resolved_at"] is None
    assert datetime.fromisoformat(hook.bodies[1]["alert"]["resolved_at"]) == T0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("where", ["closed port", "server error", "not a url"])
async def test_a_failing_webhook_is_logged_not_raised(
    where: str, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    url = {
        "closed port": f"http://127.0.0.1:{closed_port()}/hook",
        "server error": f"{hook.url}/broken",
        "not a url": "nowhere",
    }[where]
    board, clock = Board(), FakeClock()
    m = monitor(board, clock, CONFIG.model_copy(update={"webhook_url": url}))
    board.current = [window(requests=20, errors=10)]
    try:
        (fired,) = await m.check_once()
    finally:
        await m.stop()
    assert fired.state == "firing"
    assert m.active == [fired]
    assert any("webhook" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# --- store -----------------------------------------------------------------------------------


async def test_alerts_are_stored_and_resolved(database: Database) -> None:
    repo = AlertRepository(database)
    board, clock = Board(), FakeClock()
    m = monitor(board, clock, repository=repo)
    board.current = [window("a", requests=20, errors=10, p95=4000.0, circuit="open")]
    fired = await m.check_once()
    assert {a.rule for a in fired} == {"error_rate", "latency_p95"}  # one open < threshold 2
    assert all(a.id is not None for a in fired)

    since, until = T0 - timedelta(hours=1), T0 + timedelta(hours=1)
    rows = await repo.list(since, until)
    assert {(r["id"], r["rule"], r["target"], r["state"]) for r in rows} == {
        (a.id, a.rule, "a", "firing") for a in fired
    }
    assert all(r["created_at"] == T0 for r in rows)

    clock.advance(90)
    board.current = [window("a", requests=20, errors=10, p95=100.0)]
    (resolved,) = await m.check_once()
    assert resolved.rule == "latency_p95"
    (row,) = await repo.list(since, until, rule="latency_p95")
    assert row["id"] == resolved.id
    assert row["state"] == "resolved"
    assert row["resolved_at"] == T0 + timedelta(seconds=90)
    assert row["details"] == {"requests": 20, "errors": 10}
    (still,) = await repo.list(since, until, state="firing")
    assert still["rule"] == "error_rate"


class FailingRepository(AlertRepository):
    def __init__(self) -> None:
        pass

    async def add(self, alert: AlertRecord) -> int:
        raise ConnectionError("database down")

    async def resolve(self, alert_id: int, at: datetime) -> bool:
        raise ConnectionError("database down")


async def test_a_failing_database_does_not_stop_alerts(caplog: pytest.LogCaptureFixture) -> None:
    board, clock = Board(), FakeClock()
    m = monitor(board, clock, repository=FailingRepository())
    board.current = [window(requests=20, errors=10)]
    (fired,) = await m.check_once()
    assert fired.id is None
    board.current = [window(requests=20)]
    (resolved,) = await m.check_once()
    assert resolved.state == "resolved"
    assert sum("could not store" in r.getMessage() for r in caplog.records) == 2


# --- background loop -------------------------------------------------------------------------


async def test_loop_survives_errors_and_stops() -> None:
    checked = asyncio.Event()
    calls: list[float] = []

    def windows(window_s: float) -> Sequence[TargetWindow]:
        calls.append(window_s)
        if len(calls) == 1:
            raise RuntimeError("health board bug")
        checked.set()
        return [window(requests=20, errors=10)]

    m = AlertMonitor(CONFIG.model_copy(update={"interval_s": 0.001}), windows)
    m.start()
    m.start()  # a second start does not start a second loop
    assert m.running
    await asyncio.wait_for(checked.wait(), timeout=30)
    await m.stop()
    assert not m.running
    assert len(calls) >= 2
    assert [a.rule for a in m.active] == ["error_rate"]


async def test_disabled_monitor_does_not_start() -> None:
    m = AlertMonitor(CONFIG.model_copy(update={"enabled": False}), Board())
    m.start()
    assert not m.running
    await m.stop()
