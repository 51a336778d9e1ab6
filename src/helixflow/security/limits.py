"""Whether a request may run now: rate limits, parallel requests and budgets, and their headers.

Subjects: the API key (``key:<id>``, the key's limits), its user (``user:<id>``, the user's own
limits field by field over ``security.limits.user_defaults``) and the requested model
(``model:<name>``, ``security.limits.models``). For each subject with a limit:

- requests and tokens per minute are token buckets (capacity the per-minute limit, refilled
  continuously at a sixtieth of it per second). A request costs one request and its prompt
  tokens (estimated by the caller) up front; its completion tokens are taken when known
  (:meth:`Admission.settle`), which may leave a bucket negative so that the next requests
  wait. Every bucket must have room or nothing is taken from any.
- ``max_parallel`` counts requests in flight; a slot is held from admit to settle or release,
  and comes back by itself after ``slot_ttl_s`` if its replica died before giving it back.
- ``budget_usd`` caps the key's and the user's spend per calendar period in UTC (``day``,
  ``week`` from Monday, ``month``) or in ``total``. A request is refused before any work while
  the spend is at or above the budget; its cost is added when it settles. The spend counter of a
  period is seeded from the database (``inference_requests.cost_usd``) the first time it is
  needed, once for all replicas (SET NX). Requests in flight together may overshoot a budget by
  their own cost: the cost of a request is only known once it is done.

When the limits store (Redis) cannot be asked, requests are refused with a 503 (fail closed):
limits and budgets are a control, and failing open would let every replica spend without
bound for as long as Redis is away. Settling after a request never fails it: an error there is
logged, the slot comes back after its TTL and the spend counter is reseeded when missing.

Headers (OpenAI's): ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the most
constraining bucket of each dimension (the fewest remaining), on admitted and refused requests
alike; absent when no limit of that dimension applies.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from helixflow.config import Settings
from helixflow.errors import (
    BudgetExceededError,
    ConfigurationError,
    RateLimitError,
    ServiceUnavailableError,
)
from helixflow.security.identity import Principal
from helixflow.security.ratelimit import (
    Acquired,
    BucketCharge,
    LimitBackend,
    LimitStoreUnavailableError,
    MemoryLimitBackend,
    RedisLimitBackend,
    SlotClaim,
    SpendKey,
    format_duration,
    limits_redis_client,
)
from helixflow.security_config import BudgetPeriod, LimitsConfig, LimitSet
from helixflow.store.database import Database
from helixflow.store.repositories.spend import SpendRepository, SpendSubject

__all__ = [
    "Admission",
    "BudgetWindow",
    "Limiter",
    "SpendSource",
    "budget_window",
    "build_limiter",
    "effective_user_limits",
]

logger = logging.getLogger(__name__)

SpendSource = Callable[[SpendSubject, str, datetime | None], Awaitable[float]]
"""``(subject kind, subject id, since) -> USD spent since then`` (None: ever)."""

Dimension = Literal["requests", "tokens"]
SubjectKind = Literal["key", "user", "model"]

DEFAULT_SLOT_TTL_S = 600.0
"""How long a parallel-request slot lives without being released: longer than any request."""
SPEND_TTL_GRACE_S = 86_400.0
"""A period's spend counter outlives the period by this much (late settles still land)."""
UNAVAILABLE_WARN_EVERY_S = 30.0
_DIMENSION_NAMES = {"requests": "requests per min (RPM)", "tokens": "tokens per min (TPM)"}


@dataclass(frozen=True, slots=True)
class _Subject:
    kind: SubjectKind
    id: str
    label: str
    """How messages name it: ``API key 'ci'``, ``user 'alice'``, ``model 'gpt-4o'``."""
    limits: LimitSet

    @property
    def ref(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True, slots=True)
class _Bucket:
    subject: _Subject
    dimension: Dimension
    limit: int
    """Per minute: the bucket's capacity."""
    cost: float
    """Taken at admit: one request, or the estimated prompt tokens."""

    @property
    def rate(self) -> float:
        return self.limit / 60.0

    def charge(self, amount: float) -> BucketCharge:
        key = f"b:{self.subject.ref}:{self.dimension}"
        return BucketCharge(key, float(self.limit), self.rate, amount)


@dataclass(frozen=True, slots=True)
class BudgetWindow:
    """The budget period holding a moment: ``[start, end)``, both None for ``total``."""

    period: BudgetPeriod
    start: datetime | None
    end: datetime | None
    label: str

    def describe(self) -> str:
        if self.end is None:
            return "in total (this budget does not reset)"
        when = "today" if self.period == "day" else f"this {self.period}"
        return f"{when} (resets at {self.end:%Y-%m-%d %H:%M} UTC)"


def budget_window(period: BudgetPeriod, now: float) -> BudgetWindow:
    """The calendar period (UTC) holding epoch second ``now``."""
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return BudgetWindow(period, day, day + timedelta(days=1), f"day:{day:%Y-%m-%d}")
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return BudgetWindow(period, start, start + timedelta(days=7), f"week:{start:%Y-%m-%d}")
    if period == "month":
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        return BudgetWindow(period, start, end, f"month:{start:%Y-%m}")
    return BudgetWindow(period, None, None, "total")


def effective_user_limits(defaults: LimitSet, own: LimitSet | None) -> LimitSet:
    """A user's limits: each field the user's own set gives (even as null, for "no limit")
    wins; every other field comes from ``user_defaults``."""
    if own is None:
        return defaults
    return defaults.model_copy(update={name: getattr(own, name) for name in own.model_fields_set})


class Admission:
    """A request let through: its headers, and what to give back or add once it is done.

    Exactly one of :meth:`settle` (the request ran) or :meth:`release` (it failed before any
    work) takes effect; later calls, of either, do nothing.
    """

    def __init__(
        self,
        limiter: Limiter | None,
        headers: dict[str, str],
        *,
        member: str = "",
        token_buckets: Sequence[_Bucket] = (),
        slots: Sequence[str] = (),
        spend: Sequence[SpendKey] = (),
        prompt_tokens: int = 0,
    ) -> None:
        self.headers = headers
        self._limiter = limiter
        self._member = member
        self._token_buckets = tuple(token_buckets)
        self._slots = tuple(slots)
        self._spend = tuple(spend)
        self._prompt_tokens = prompt_tokens
        self._done = limiter is None

    @property
    def done(self) -> bool:
        return self._done

    async def settle(
        self,
        completion_tokens: int,
        cost_usd: float,
        *,
        prompt_tokens: int | None = None,
        now: float | None = None,
    ) -> None:
        """The request is done: take its completion tokens (and the difference between the
        actual ``prompt_tokens``, when given, and the estimate), add its cost to the spend
        counters and free its parallel slots. Call it before recording the request's
        telemetry, so that a counter seeded from the database cannot count it twice."""
        if self._done or self._limiter is None:
            return
        self._done = True
        extra = max(0, completion_tokens)
        if prompt_tokens is not None:
            extra += max(0, prompt_tokens) - self._prompt_tokens
        await self._limiter._finish(self, extra, max(0.0, cost_usd), now)

    async def release(self, *, now: float | None = None) -> None:
        """The request failed before any work: free its slots and give back its prompt tokens
        (it still counts as a request)."""
        if self._done or self._limiter is None:
            return
        self._done = True
        await self._limiter._finish(self, -self._prompt_tokens, 0.0, now)


class Limiter:
    """Admits requests against the configured limits (``security.limits``) and the caller's."""

    def __init__(
        self,
        config: LimitsConfig,
        backend: LimitBackend,
        spend_source: SpendSource | None,
        *,
        clock: Callable[[], float] = time.time,
        slot_ttl_s: float = DEFAULT_SLOT_TTL_S,
    ) -> None:
        if slot_ttl_s <= 0:
            raise ValueError(f"slot_ttl_s must be positive, not {slot_ttl_s}")
        self.config = config
        self.backend = backend
        self._spend_source = spend_source
        self._clock = clock
        self._slot_ttl_s = slot_ttl_s
        self._last_warning_at: float | None = None
        self._seeding: dict[SpendKey, asyncio.Future[float]] = {}

    async def admit(
        self, principal: Principal, model: str, prompt_tokens: int, *, now: float | None = None
    ) -> Admission:
        """Let the request in, or raise: RateLimitError (429, Retry-After), BudgetExceededError
        (429 ``insufficient_quota``), ServiceUnavailableError (503: limits cannot be checked)."""
        at = self._clock() if now is None else now
        prompt_tokens = max(0, prompt_tokens)
        subjects = self._subjects(principal, model)
        buckets = [b for s in subjects for b in _buckets(s, prompt_tokens)]
        slot_subjects = [s for s in subjects if s.limits.max_parallel is not None]
        slots = [SlotClaim(f"p:{s.ref}", s.limits.max_parallel or 0) for s in slot_subjects]
        budgets = [
            (s, s.limits.budget_usd, budget_window(s.limits.budget_period, at))
            for s in subjects
            if s.kind != "model" and s.limits.budget_usd is not None
        ]
        if not buckets and not slots and not budgets:
            return Admission(None, {})
        member = uuid.uuid4().hex
        try:
            if budgets:
                await self._check_budgets(budgets, buckets, at)
            acquired = await self.backend.acquire(
                [b.charge(b.cost) for b in buckets], slots, member, at, self._slot_ttl_s
            )
        except LimitStoreUnavailableError as exc:
            raise self._unavailable(exc, at) from exc
        headers = _headers(buckets, acquired.levels)
        if not acquired.admitted:
            raise _refusal(buckets, slot_subjects, acquired, headers)
        return Admission(
            self,
            headers,
            member=member,
            token_buckets=[b for b in buckets if b.dimension == "tokens"],
            slots=[c.key for c in slots],
            spend=[SpendKey(s.ref, w.label) for s, _, w in budgets],
            prompt_tokens=prompt_tokens,
        )

    async def aclose(self) -> None:
        await self.backend.aclose()

    def _subjects(self, principal: Principal, model: str) -> list[_Subject]:
        out: list[_Subject] = []
        if principal.key_id is not None and principal.key_limits is not None:
            label = f"API key '{principal.name}'" if principal.kind == "key" else "API key"
            out.append(_Subject("key", principal.key_id, label, principal.key_limits))
        if principal.user_id is not None:
            limits = effective_user_limits(self.config.user_defaults, principal.user_limits)
            label = f"user '{principal.name}'" if principal.kind == "user" else "the key's user"
            out.append(_Subject("user", principal.user_id, label, limits))
        model_limits = self.config.models.get(model)
        if model_limits is not None:
            out.append(_Subject("model", model, f"model '{model}'", model_limits))
        return out

    async def _check_budgets(
        self,
        budgets: Sequence[tuple[_Subject, float | None, BudgetWindow]],
        buckets: Sequence[_Bucket],
        at: float,
    ) -> None:
        keys = [SpendKey(s.ref, w.label) for s, _, w in budgets]
        values = await self.backend.get_spend(keys)
        for (subject, budget, window), key, spent in zip(budgets, keys, values, strict=True):
            if spent is None:
                spent = await self._seed(subject, key, window, at)
            if budget is None or spent < budget:
                continue
            # Refused before any bucket is touched; the headers still say where the caller is.
            peek = await self.backend.acquire(
                [b.charge(0.0) for b in buckets], [], "", at, self._slot_ttl_s
            )
            headers = _headers(buckets, peek.levels) | {"x-should-retry": "false"}
            raise BudgetExceededError(
                f"Budget exceeded for {subject.label}: spent ${spent:.4f} of ${budget:.2f} "
                f"{window.describe()}.",
                headers=headers,
            )

    async def _seed(
        self, subject: _Subject, key: SpendKey, window: BudgetWindow, at: float
    ) -> float:
        """The counter's value once seeded. Concurrent requests of this replica share one
        database query; replicas seeding at once all end up with the first one's value."""
        pending = self._seeding.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load_and_seed(subject, key, window, at))
            self._seeding[key] = pending
            pending.add_done_callback(lambda done: self._seed_done(key, done))
        return await asyncio.shield(pending)

    def _seed_done(self, key: SpendKey, done: asyncio.Future[float]) -> None:
        self._seeding.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone away meanwhile

    async def _load_and_seed(
        self, subject: _Subject, key: SpendKey, window: BudgetWindow, at: float
    ) -> float:
        amount = 0.0
        if self._spend_source is not None and subject.kind in ("key", "user"):
            kind: SpendSubject = "key" if subject.kind == "key" else "user"
            try:
                amount = await self._spend_source(kind, subject.id, window.start)
            except Exception as exc:  # any database failure: the budget cannot be checked
                raise LimitStoreUnavailableError(f"database: {exc}") from exc
        ttl = None
        if window.end is not None:
            ttl = window.end.timestamp() - at + SPEND_TTL_GRACE_S
        return await self.backend.seed_spend(key, amount, ttl)

    async def _finish(
        self, admission: Admission, tokens: float, cost: float, now: float | None
    ) -> None:
        at = self._clock() if now is None else now
        charges = [b.charge(tokens) for b in admission._token_buckets] if tokens else []
        try:
            await self.backend.settle(
                charges, admission._slots, admission._member, admission._spend, cost, at
            )
        except LimitStoreUnavailableError as exc:
            self._warn(
                f"could not settle a request's limits ({exc}); its parallel slots come "
                f"back after {self._slot_ttl_s:g}s",
                at,
            )

    def _unavailable(self, exc: LimitStoreUnavailableError, at: float) -> ServiceUnavailableError:
        self._warn(f"refusing requests: limits cannot be checked ({exc})", at)
        return ServiceUnavailableError(
            "Rate limits and budgets cannot be checked right now (their store is unreachable), "
            "so the request was not run. Please retry shortly.",
            code="limits_unavailable",
            headers={"Retry-After": "1"},
        )

    def _warn(self, message: str, at: float) -> None:
        last = self._last_warning_at
        if last is None or at - last >= UNAVAILABLE_WARN_EVERY_S or at < last:
            self._last_warning_at = at
            logger.warning(message)


def _buckets(subject: _Subject, prompt_tokens: int) -> list[_Bucket]:
    out: list[_Bucket] = []
    if subject.limits.rpm is not None:
        out.append(_Bucket(subject, "requests", subject.limits.rpm, 1.0))
    if subject.limits.tpm is not None:
        out.append(_Bucket(subject, "tokens", subject.limits.tpm, float(prompt_tokens)))
    return out


def _remaining(level: float) -> int:
    return max(0, math.floor(level))


def _headers(buckets: Sequence[_Bucket], levels: Sequence[float]) -> dict[str, str]:
    out: dict[str, str] = {}
    for dimension in ("requests", "tokens"):
        pairs = [(b, lv) for b, lv in zip(buckets, levels, strict=True) if b.dimension == dimension]
        if not pairs:
            continue
        bucket, level = min(
            pairs, key=lambda p: (_remaining(p[1]), p[0].limit, (p[1] - p[0].limit) / p[0].rate)
        )
        out[f"x-ratelimit-limit-{dimension}"] = str(bucket.limit)
        out[f"x-ratelimit-remaining-{dimension}"] = str(_remaining(level))
        out[f"x-ratelimit-reset-{dimension}"] = format_duration(
            (bucket.limit - level) / bucket.rate
        )
    return out


def _refusal(
    buckets: Sequence[_Bucket],
    slot_subjects: Sequence[_Subject],
    acquired: Acquired,
    headers: dict[str, str],
) -> RateLimitError:
    """The error naming the limit that refused (the one to wait longest for)."""
    short: list[tuple[float, _Bucket, float]] = []
    for bucket, level in zip(buckets, acquired.levels, strict=True):
        need = min(bucket.cost, bucket.limit)
        if level < need:
            short.append(((need - level) / bucket.rate, bucket, level))
    if short:
        wait, bucket, level = max(short, key=lambda s: s[0])
        message = (
            f"Rate limit reached for {bucket.subject.label} on "
            f"{_DIMENSION_NAMES[bucket.dimension]}: Limit {bucket.limit}, "
            f"Remaining {_remaining(level)}, Requested {math.ceil(bucket.cost)}. "
            f"Please try again in {format_duration(wait)}."
        )
        retry_after = max(1, math.ceil(round(wait, 6)))
    else:
        full = [
            (s, n)
            for s, n in zip(slot_subjects, acquired.in_flight, strict=True)
            if n >= (s.limits.max_parallel or 0)
        ]
        if full:
            subject, in_flight = full[0]
            message = (
                f"Rate limit reached for {subject.label} on parallel requests: Limit "
                f"{subject.limits.max_parallel}, In flight {in_flight}. Please try again when "
                "one of them completes."
            )
        else:  # the store refused on a limit that changed meanwhile
            message = "Rate limit reached. Please try again in 1s."
        retry_after = 1
    error = RateLimitError(message, retry_after=retry_after)
    error.headers.update(headers)
    return error


def build_limiter(settings: Settings, database: Database | None) -> Limiter:
    """The configured limiter; spend is seeded from ``database`` (None: from zero)."""
    config = settings.security.limits
    source = SpendRepository(database).spent if database is not None else None
    backend: LimitBackend
    if config.backend == "redis":
        if not settings.redis.url:
            raise ConfigurationError(
                "security.limits.backend is 'redis' but no Redis URL is set: set "
                "HELIXFLOW_REDIS_URL (e.g. redis://host:6379/0), or use the 'memory' backend"
            )
        backend = RedisLimitBackend(limits_redis_client(settings.redis.url), config.key_prefix)
    else:
        backend = MemoryLimitBackend()
    return Limiter(config, backend, source)
