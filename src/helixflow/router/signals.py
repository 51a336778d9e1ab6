"""What strategies see and learn from: a snapshot of each candidate's load and health, the
request's needs, and the outcome of each attempt."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from helixflow.router.catalogue import DEFAULT_CATEGORY, Target

CircuitState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class TargetStats:
    """One candidate as the router sees it at decision time."""

    target: Target
    in_flight: int = 0
    """Requests sent and not finished."""
    queue_depth: int = 0
    """Requests waiting for a slot (local engines only)."""
    ewma_latency_ms: float | None = None
    """Smoothed whole-request latency; None until a request finished."""
    ewma_ttft_ms: float | None = None
    """Smoothed time to the first token (streamed or local requests)."""
    tokens_per_s: float | None = None
    """Smoothed completion tokens per second of a request after its first token."""
    successes: int = 0
    failures: int = 0
    circuit: CircuitState = "closed"

    @property
    def id(self) -> str:
        return self.target.id

    @property
    def outstanding(self) -> int:
        return self.in_flight + self.queue_depth


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What one request needs, as far as choosing a target goes."""

    category: str = DEFAULT_CATEGORY
    """Task category for quality scores (header ``X-HelixFlow-Category``)."""
    prompt_tokens: int = 0
    """Estimated prompt size."""
    max_tokens: int | None = None
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    """The group's strategy options (quality_floor, budget_usd, ...)."""

    @property
    def expected_completion_tokens(self) -> int:
        return self.max_tokens if self.max_tokens is not None else 256


@dataclass(frozen=True, slots=True)
class Scored:
    """A candidate with its strategy score (higher is better) and why."""

    target: Target
    score: float
    note: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt on a target went."""

    success: bool
    latency_ms: float
    ttft_ms: float | None = None
    completion_tokens: int = 0
    feedback: float | None = None
    """A caller's rating in [0, 1] (``POST /api/v1/router/feedback``), when this outcome is
    feedback rather than a finished attempt."""
