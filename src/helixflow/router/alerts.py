"""Alerts on the router's targets: error rate, latency p95 and open circuits.

Every ``interval_s`` the :class:`AlertMonitor` asks the health board for each target's last
``window_s`` seconds (:class:`TargetWindow`) and runs every rule over them. A rule answers with
what is wrong right now (:class:`Firing`); the monitor turns a new firing into an alert that is
logged at WARNING, stored in the ``alerts`` table and POSTed to the webhook, and resolves an
alert once its rule no longer reports it (logged at INFO, stored, posted).

An alert is keyed by (rule, target): while it is firing the same condition does not fire again,
and after it fired, the key stays quiet for ``cooldown_s`` even if it resolved meanwhile, so a
flapping target does not flood the log and the webhook. Rule semantics follow Prometheus: a
condition that can no longer be evaluated (too few requests in the window) counts as cleared.

The monitor never lets an error escape into the server: a failing rule, database or webhook is
logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar

import aiohttp

from helixflow.router.signals import CircuitState
from helixflow.routing_config import AlertConfig
from helixflow.store.repositories.alerts import AlertRecord, AlertRepository, Severity
from helixflow.store.schema import utcnow

__all__ = [
    "RULES",
    "AlertMonitor",
    "AlertRecord",
    "AlertRule",
    "ErrorRateRule",
    "Firing",
    "LatencyP95Rule",
    "OpenCircuitsRule",
    "TargetWindow",
    "default_rules",
]

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class TargetWindow:
    """One target's outcomes over the last ``window_s`` seconds, from the health board."""

    target: str
    requests: int
    errors: int
    latency_p95_ms: float | None
    """p95 latency of the successful requests; None when there were none."""
    circuit: CircuitState = "closed"

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Firing:
    """A condition a rule finds true right now."""

    rule: str
    target: str | None
    severity: Severity
    value: float
    threshold: float
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.rule, self.target)


# --- rules -----------------------------------------------------------------------------------


class AlertRule(ABC):
    """A check over every target's window; registered in :data:`RULES` by ``name``."""

    name: ClassVar[str]

    @abstractmethod
    def evaluate(self, windows: Sequence[TargetWindow], config: AlertConfig) -> list[Firing]:
        """What is wrong now; an empty list when all is well."""


def _doubled(threshold: float, ceiling: float | None = None) -> float:
    """The value from which a warning becomes critical: twice the threshold."""
    return 2 * threshold if ceiling is None else min(2 * threshold, ceiling)


class ErrorRateRule(AlertRule):
    """Share of failed requests of a target with at least ``min_requests`` in the window."""

    name = "error_rate"

    def evaluate(self, windows: Sequence[TargetWindow], config: AlertConfig) -> list[Firing]:
        out: list[Firing] = []
        for w in windows:
            if w.requests < config.min_requests or w.error_rate < config.error_rate:
                continue
            critical = w.error_rate >= _doubled(config.error_rate, 1.0)
            out.append(
                Firing(
                    rule=self.name,
                    target=w.target,
                    severity="critical" if critical else "warning",
                    value=w.error_rate,
                    threshold=config.error_rate,
                    message=f"error rate of {w.target} is {w.error_rate:.1%} "
                    f"({w.errors} of {w.requests} requests in the last {config.window_s:g}s; "
                    f"threshold {config.error_rate:.1%})",
                    details={"requests": w.requests, "errors": w.errors, "circuit": w.circuit},
                )
            )
        return out


class LatencyP95Rule(AlertRule):
    """p95 latency of a target with at least ``min_requests`` in the window."""

    name = "latency_p95"

    def evaluate(self, windows: Sequence[TargetWindow], config: AlertConfig) -> list[Firing]:
        out: list[Firing] = []
        threshold = config.latency_p95_ms
        for w in windows:
            p95 = w.latency_p95_ms
            if w.requests < config.min_requests or p95 is None or p95 < threshold:
                continue
            out.append(
                Firing(
                    rule=self.name,
                    target=w.target,
                    severity="critical" if p95 >= _doubled(threshold) else "warning",
                    value=p95,
                    threshold=threshold,
                    message=f"latency p95 of {w.target} is {p95:.0f} ms over the last "
                    f"{config.window_s:g}s ({w.requests} requests; threshold {threshold:.0f} ms)",
                    details={"requests": w.requests, "errors": w.errors},
                )
            )
        return out


class OpenCircuitsRule(AlertRule):
    """Open circuits across all targets; one alert (target None) naming them."""

    name = "open_circuits"

    def evaluate(self, windows: Sequence[TargetWindow], config: AlertConfig) -> list[Firing]:
        open_targets = sorted(w.target for w in windows if w.circuit == "open")
        if len(open_targets) < config.open_circuits:
            return []
        everything = len(open_targets) == len(windows)
        return [
            Firing(
                rule=self.name,
                target=None,
                severity="critical" if everything else "warning",
                value=float(len(open_targets)),
                threshold=float(config.open_circuits),
                message=f"{len(open_targets)} of {len(windows)} circuits open "
                f"(threshold {config.open_circuits}): {', '.join(open_targets)}",
                details={
                    "targets": open_targets,
                    "half_open": sorted(w.target for w in windows if w.circuit == "half_open"),
                    "total": len(windows),
                },
            )
        ]


RULES: Mapping[str, type[AlertRule]] = MappingProxyType(
    {rule.name: rule for rule in (ErrorRateRule, LatencyP95Rule, OpenCircuitsRule)}
)
"""Every rule class by name."""


def default_rules() -> list[AlertRule]:
    """One instance of every registered rule."""
    return [rule() for rule in RULES.values()]


# --- monitor ---------------------------------------------------------------------------------


def _default_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))


class AlertMonitor:
    """Runs the rules every ``interval_s``; logs, stores and posts what fires and resolves.

    ``windows(window_s)`` returns every target's recent window (``HealthBoard.windows``).
    ``clock`` (seconds, monotonic) times the cooldowns; ``now`` stamps the alerts.
    """

    def __init__(
        self,
        config: AlertConfig,
        windows: Callable[[float], Sequence[TargetWindow]],
        repository: AlertRepository | None = None,
        session_factory: Callable[[], aiohttp.ClientSession] = _default_session,
        clock: Callable[[], float] = time.monotonic,
        *,
        now: Callable[[], datetime] = utcnow,
        rules: Sequence[AlertRule] | None = None,
    ) -> None:
        self.config = config
        self._windows = windows
        self._repository = repository
        self._session_factory = session_factory
        self._clock = clock
        self._now = now
        self.rules: list[AlertRule] = list(rules) if rules is not None else default_rules()
        self._active: dict[tuple[str, str | None], AlertRecord] = {}
        self._last_fired: dict[tuple[str, str | None], float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> list[AlertRecord]:
        """The alerts firing now."""
        return list(self._active.values())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the background loop (no-op when alerts are disabled or it already runs)."""
        if not self.config.enabled or self.running:
            return
        self._task = asyncio.create_task(self._run(), name="helixflow-alerts")

    async def stop(self) -> None:
        """Stop the loop and close the webhook session."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                await self.check_once()
            except Exception:
                log.exception("alert check failed; trying again in %gs", self.config.interval_s)

    async def check_once(self) -> list[AlertRecord]:
        """Evaluate every rule once; returns the alerts that fired and those that resolved."""
        windows = list(self._windows(self.config.window_s))
        firings: dict[tuple[str, str | None], Firing] = {}
        evaluated: set[str] = set()
        for rule in self.rules:
            try:
                found = rule.evaluate(windows, self.config)
            except Exception:
                log.exception("alert rule %s failed", rule.name)
                continue
            evaluated.add(rule.name)
            for firing in found:
                firings.setdefault(firing.key, firing)
        changed: list[AlertRecord] = []
        for key, alert in list(self._active.items()):
            if key[0] in evaluated and key not in firings:
                changed.append(await self._resolve(key, alert))
        for key, firing in firings.items():
            if key in self._active or not self._cooled_down(key):
                continue
            changed.append(await self._fire(firing))
        self._forget_quiet_keys()
        return changed

    def _forget_quiet_keys(self) -> None:
        """Drop cooldowns that have run out, so that the map does not grow for ever."""
        now = self._clock()
        for key, last in list(self._last_fired.items()):
            if key not in self._active and now - last >= self.config.cooldown_s:
                del self._last_fired[key]

    def _cooled_down(self, key: tuple[str, str | None]) -> bool:
        last = self._last_fired.get(key)
        return last is None or self._clock() - last >= self.config.cooldown_s

    async def _fire(self, firing: Firing) -> AlertRecord:
        self._last_fired[firing.key] = self._clock()
        alert = AlertRecord(
            rule=firing.rule,
            target=firing.target,
            severity=firing.severity,
            value=firing.value,
            threshold=firing.threshold,
            message=firing.message,
            details=dict(firing.details),
            created_at=self._now(),
        )
        log.warning(
            "alert %s firing (%s): target=%s value=%g threshold=%g: %s",
            alert.rule,
            alert.severity,
            alert.target if alert.target is not None else "-",
            alert.value,
            alert.threshold,
            alert.message,
        )
        alert = await self._store(alert)
        self._active[firing.key] = alert
        await self._post(alert)
        return alert

    async def _resolve(self, key: tuple[str, str | None], alert: AlertRecord) -> AlertRecord:
        del self._active[key]
        resolved = replace(alert, state="resolved", resolved_at=self._now())
        log.info(
            "alert %s resolved: target=%s (fired at %s: %s)",
            resolved.rule,
            resolved.target if resolved.target is not None else "-",
            resolved.created_at.isoformat(),
            resolved.message,
        )
        if self._repository is not None:
            try:
                if resolved.id is None:  # storing it failed when it fired
                    resolved = await self._store(resolved)
                elif resolved.resolved_at is not None:
                    await self._repository.resolve(resolved.id, resolved.resolved_at)
            except Exception:
                log.exception("could not store the resolution of alert %s", resolved.id)
        await self._post(resolved)
        return resolved

    async def _store(self, alert: AlertRecord) -> AlertRecord:
        if self._repository is None:
            return alert
        try:
            return replace(alert, id=await self._repository.add(alert))
        except Exception:
            log.exception("could not store alert %s for %s", alert.rule, alert.target)
            return alert

    async def _post(self, alert: AlertRecord) -> None:
        url = self.config.webhook_url
        if not url:
            return
        body = {"source": "helixflow", "alert": alert.to_dict()}
        try:
            if self._session is None or self._session.closed:
                self._session = self._session_factory()
            timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
            async with self._session.post(url, json=body, timeout=timeout) as response:
                if response.status >= 300:
                    log.warning(
                        "alert webhook %s answered %d for alert %s",
                        url,
                        response.status,
                        alert.rule,
                    )
        except Exception as exc:  # a webhook never breaks the monitor
            log.warning(
                "alert webhook %s failed for alert %s: %s",
                url,
                alert.rule,
                str(exc) or type(exc).__name__,
            )
