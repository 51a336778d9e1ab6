"""The limiter: bursts, token reconciliation, refill, all-or-nothing, parallel requests, budgets,
headers, spend seeded from the database, and a Redis that goes away."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from helixflow.config import Settings
from helixflow.errors import (
    BudgetExceededError,
    ConfigurationError,
    RateLimitError,
    ServiceUnavailableError,
)
from helixflow.security.identity import ANONYMOUS, Principal
from helixflow.security.limits import (
    Admission,
    Limiter,
    SpendSource,
    budget_window,
    build_limiter,
    effective_user_limits,
)
from helixflow.security.ratelimit import (
    LimitBackend,
    MemoryLimitBackend,
    RedisLimitBackend,
    limits_redis_client,
)
from helixflow.security_config import LimitsConfig, LimitSet
from helixflow.store.database import Database
from helixflow.store.repositories.spend import SpendRepository, SpendSubject
from helixflow.store.repositories.telemetry import TelemetryRepository
from helixflow.store.telemetry.events import InferenceEvent
from tests.security.conftest import closed_port
from tests.security.factories import FakeClock
from tests.tcp_proxy import TcpProxy

MODEL = "smollm2-135m"

MakeLimiter = Callable[..., Limiter]


def key_principal(
    limits: LimitSet | None = None,
    *,
    key_id: str = "k1",
    user_id: str | None = None,
    user_limits: LimitSet | None = None,
) -> Principal:
    return Principal(
        kind="key",
        role="developer",
        name="ci-bot",
        key_id=key_id,
        user_id=user_id,
        key_limits=limits or LimitSet(),
        user_limits=user_limits,
    )


def user_principal(limits: LimitSet | None = None, user_id: str = "u1") -> Principal:
    return Principal(
        kind="user", role="developer", name="alice", user_id=user_id, user_limits=limits
    )


@pytest.fixture(params=["memory", "redis"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def make_limiter(
    request: pytest.FixtureRequest, backend_kind: str, clock: FakeClock
) -> AsyncIterator[MakeLimiter]:
    """Builds limiters on the parametrized backend; on Redis every one shares the same keys,
    like replicas do."""
    made: list[Limiter] = []

    def make(config: LimitsConfig | None = None, spend: SpendSource | None = None) -> Limiter:
        backend: LimitBackend
        if backend_kind == "memory":
            backend = MemoryLimitBackend()
        else:
            url: str = request.getfixturevalue("redis_url")
            prefix: str = request.getfixturevalue("redis_key_prefix")
            backend = RedisLimitBackend(limits_redis_client(url), prefix)
        limiter = Limiter(config or LimitsConfig(), backend, spend, clock=clock)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


async def outcomes(
    calls: list[Awaitable[Admission]],
) -> tuple[list[Admission], list[RateLimitError]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    admitted = [r for r in results if isinstance(r, Admission)]
    refused = [r for r in results if isinstance(r, RateLimitError)]
    assert len(admitted) + len(refused) == len(results), [
        r for r in results if not isinstance(r, Admission | RateLimitError)
    ]
    return admitted, refused


# -- bursts -----------------------------------------------------------------------------------


async def test_a_burst_of_200_against_rpm_50_lets_exactly_50_through(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter()
    principal = key_principal(LimitSet(rpm=50))
    admitted, refused = await outcomes([limiter.admit(principal, MODEL, 10) for _ in range(200)])
    assert (len(admitted), len(refused)) == (50, 150)
    error = refused[0]
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert "API key 'ci-bot'" in error.message
    assert "requests per min (RPM)" in error.message
    assert error.retry_after == 2  # 1.2 s for one request at 50/min, rounded up
    assert error.headers["Retry-After"] == "2"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"


async def test_two_replicas_sharing_redis_let_exactly_50_through(
    redis_url: str, redis_key_prefix: str, clock: FakeClock
) -> None:
    replicas = [
        Limiter(
            LimitsConfig(backend="redis"),
            RedisLimitBackend(limits_redis_client(redis_url), redis_key_prefix),
            None,
            clock=clock,
        )
        for _ in range(2)
    ]
    principal = key_principal(LimitSet(rpm=50))
    try:
        calls = [replicas[i % 2].admit(principal, MODEL, 10) for i in range(200)]
        admitted, refused = await outcomes(calls)
        assert (len(admitted), len(refused)) == (50, 150)
        by_replica = [sum(1 for a in admitted if a._limiter is r) for r in replicas]
        assert all(n > 0 for n in by_replica), by_replica  # both took part
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_a_memory_limiter_does_not_share_with_another_process(clock: FakeClock) -> None:
    """Why Redis exists: two in-process limiters each let the whole limit through."""
    first, second = (Limiter(LimitsConfig(), MemoryLimitBackend(), None, clock=clock) for _ in "ab")
    principal = key_principal(LimitSet(rpm=5))
    admitted, _ = await outcomes([lim.admit(principal, MODEL, 1) for lim in (first, second) * 10])
    assert len(admitted) == 10


# -- refill, tokens, all-or-nothing -----------------------------------------------------------


async def test_requests_refill_over_time(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    limiter = make_limiter()
    principal = key_principal(LimitSet(rpm=60))
    admitted, _ = await outcomes([limiter.admit(principal, MODEL, 0) for _ in range(60)])
    assert len(admitted) == 60
    with pytest.raises(RateLimitError):
        await limiter.admit(principal, MODEL, 0)
    clock.advance(1.0)  # one more request's worth
    await limiter.admit(principal, MODEL, 0)
    with pytest.raises(RateLimitError) as refused:
        await limiter.admit(principal, MODEL, 0)
    assert refused.value.retry_after == 1
    clock.advance(60.0)
    admitted, refused_now = await outcomes([limiter.admit(principal, MODEL, 0) for _ in range(70)])
    assert (len(admitted), len(refused_now)) == (60, 10)


async def test_tokens_per_minute_with_reconciliation(
    make_limiter: MakeLimiter, clock: FakeClock
) -> None:
    limiter = make_limiter()
    principal = key_principal(LimitSet(tpm=600))  # 10 tokens per second
    first = await limiter.admit(principal, MODEL, 200)
    assert first.headers["x-ratelimit-remaining-tokens"] == "400"
    await first.settle(completion_tokens=300, cost_usd=0.0)  # 100 left
    with pytest.raises(RateLimitError) as refused:
        await limiter.admit(principal, MODEL, 150)  # 50 short: 5 s
    assert refused.value.retry_after == 5
    assert "tokens per min (TPM)" in refused.value.message
    assert "Limit 600, Remaining 100, Requested 150" in refused.value.message
    clock.advance(5.0)
    second = await limiter.admit(principal, MODEL, 150)  # 150 - 150: empty
    await second.settle(completion_tokens=400, cost_usd=0.0)  # drives it to -400
    with pytest.raises(RateLimitError) as refused:
        await limiter.admit(principal, MODEL, 0)  # even a request of no tokens waits
    assert refused.value.retry_after == 40
    clock.advance(40.0)
    await limiter.admit(principal, MODEL, 0)


async def test_settle_corrects_the_prompt_estimate_and_is_idempotent(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter()
    principal = key_principal(LimitSet(tpm=1000))
    admission = await limiter.admit(principal, MODEL, 500)
    await admission.settle(completion_tokens=100, cost_usd=0.0, prompt_tokens=300)
    await admission.settle(completion_tokens=100, cost_usd=0.0, prompt_tokens=300)
    await admission.release()
    assert admission.done
    probe = await limiter.admit(principal, MODEL, 0)
    assert probe.headers["x-ratelimit-remaining-tokens"] == "600"  # 1000 - 300 - 100


async def test_release_gives_back_the_prompt_tokens_but_counts_the_request(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter()
    principal = key_principal(LimitSet(rpm=10, tpm=1000))
    admission = await limiter.admit(principal, MODEL, 700)
    await admission.release()
    await admission.settle(completion_tokens=500, cost_usd=1.0)  # too late: nothing
    probe = await limiter.admit(principal, MODEL, 0)
    assert probe.headers["x-ratelimit-remaining-tokens"] == "1000"
    assert probe.headers["x-ratelimit-remaining-requests"] == "8"


async def test_a_refusing_model_bucket_takes_nothing_from_the_key(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(LimitsConfig(models={MODEL: LimitSet(rpm=1)}))
    principal = key_principal(LimitSet(rpm=10, tpm=1000))
    await limiter.admit(principal, MODEL, 100)
    for _ in range(3):
        with pytest.raises(RateLimitError) as refused:
            await limiter.admit(principal, MODEL, 100)
        assert f"model '{MODEL}'" in refused.value.message
    other = await limiter.admit(principal, "other-model", 0)
    assert other.headers["x-ratelimit-remaining-requests"] == "8"  # 10 - 1 - this one
    assert other.headers["x-ratelimit-remaining-tokens"] == "900"


async def test_user_limits_hold_across_the_users_keys(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(LimitsConfig(user_defaults=LimitSet(rpm=3)))
    keys = [key_principal(LimitSet(rpm=100), key_id=f"k{i}", user_id="u1") for i in range(3)]
    admitted, refused = await outcomes([limiter.admit(keys[i % 3], MODEL, 1) for i in range(9)])
    assert (len(admitted), len(refused)) == (3, 6)
    assert "the key's user" in refused[0].message


def test_a_users_own_limits_override_the_defaults_field_by_field() -> None:
    defaults = LimitSet(rpm=10, tpm=1000, budget_usd=5.0, budget_period="day")
    assert effective_user_limits(defaults, None) == defaults
    assert effective_user_limits(defaults, LimitSet()) == defaults
    mine = effective_user_limits(defaults, LimitSet(tpm=50, rpm=None))
    assert (mine.rpm, mine.tpm, mine.budget_usd, mine.budget_period) == (None, 50, 5.0, "day")


# -- parallel requests ------------------------------------------------------------------------


async def test_max_parallel(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    limiter = make_limiter()
    principal = user_principal(LimitSet(max_parallel=2))
    first = await limiter.admit(principal, MODEL, 0)
    second = await limiter.admit(principal, MODEL, 0)
    with pytest.raises(RateLimitError) as refused:
        await limiter.admit(principal, MODEL, 0)
    assert "user 'alice' on parallel requests: Limit 2, In flight 2" in refused.value.message
    assert refused.value.retry_after == 1
    await first.settle(10, 0.0)
    await first.settle(10, 0.0)  # idempotent: frees one slot, not two
    third = await limiter.admit(principal, MODEL, 0)
    with pytest.raises(RateLimitError):
        await limiter.admit(principal, MODEL, 0)
    await second.release()
    await third.release()
    burst, _ = await outcomes([limiter.admit(principal, MODEL, 0) for _ in range(10)])
    assert len(burst) == 2


async def test_a_crashed_replicas_slot_comes_back_after_the_slot_ttl(
    backend_kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    backend: LimitBackend = MemoryLimitBackend()
    if backend_kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        backend = RedisLimitBackend(
            limits_redis_client(url), request.getfixturevalue("redis_key_prefix")
        )
    limiter = Limiter(LimitsConfig(), backend, None, clock=clock, slot_ttl_s=120.0)
    principal = key_principal(LimitSet(max_parallel=1))
    try:
        await limiter.admit(principal, MODEL, 0)  # never settled
        clock.advance(119.0)
        with pytest.raises(RateLimitError):
            await limiter.admit(principal, MODEL, 0)
        clock.advance(1.0)
        await limiter.admit(principal, MODEL, 0)
    finally:
        await limiter.aclose()


# -- budgets ----------------------------------------------------------------------------------


async def test_budget_exhaustion_and_reset(make_limiter: MakeLimiter, clock: FakeClock) -> None:
    limiter = make_limiter()
    principal = key_principal(LimitSet(rpm=100, budget_usd=1.0, budget_period="day"))
    first = await limiter.admit(principal, MODEL, 10)
    await first.settle(5, cost_usd=0.6)
    second = await limiter.admit(principal, MODEL, 10)  # 0.60 < 1.00
    await second.settle(5, cost_usd=0.6)
    with pytest.raises(BudgetExceededError) as refused:
        await limiter.admit(principal, MODEL, 10)
    error = refused.value
    assert (error.status_code, error.error_type, error.code) == (
        429,
        "insufficient_quota",
        "budget_exceeded",
    )
    assert error.message == (
        "Budget exceeded for API key 'ci-bot': spent $1.2000 of $1.00 today "
        "(resets at 2024-05-02 00:00 UTC)."
    )
    assert error.headers["x-should-retry"] == "false"
    assert error.headers["x-ratelimit-remaining-requests"] == "98"  # refusal took nothing
    clock.now = datetime(2024, 5, 1, 23, 59, 59, tzinfo=UTC).timestamp()
    with pytest.raises(BudgetExceededError):
        await limiter.admit(principal, MODEL, 10)
    clock.now = datetime(2024, 5, 2, 0, 0, 0, tzinfo=UTC).timestamp()
    await limiter.admit(principal, MODEL, 10)


async def test_a_budget_of_zero_refuses_everything(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    with pytest.raises(BudgetExceededError, match="in total"):
        await limiter.admit(key_principal(LimitSet(budget_usd=0, budget_period="total")), MODEL, 1)


async def test_user_budget_from_the_defaults(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(LimitsConfig(user_defaults=LimitSet(budget_usd=2.0)))
    principal = key_principal(LimitSet(), user_id="u9")
    admission = await limiter.admit(principal, MODEL, 1)
    assert admission.headers == {}  # budgets only: no rate-limit headers
    await admission.settle(1, cost_usd=2.5)
    with pytest.raises(BudgetExceededError, match=r"the key's user: spent \$2.5000 of \$2.00"):
        await limiter.admit(principal, MODEL, 1)
    other_user = key_principal(LimitSet(), user_id="u10")
    await limiter.admit(other_user, MODEL, 1)


@pytest.mark.parametrize(
    ("period", "moment", "start", "end"),
    [
        ("day", datetime(2024, 5, 1, 10, 0), datetime(2024, 5, 1), datetime(2024, 5, 2)),
        ("week", datetime(2024, 5, 1, 10, 0), datetime(2024, 4, 29), datetime(2024, 5, 6)),
        ("week", datetime(2024, 5, 5, 23, 59), datetime(2024, 4, 29), datetime(2024, 5, 6)),
        ("week", datetime(2024, 5, 6, 0, 0), datetime(2024, 5, 6), datetime(2024, 5, 13)),
        ("month", datetime(2024, 5, 31, 23, 59), datetime(2024, 5, 1), datetime(2024, 6, 1)),
        ("month", datetime(2024, 12, 15), datetime(2024, 12, 1), datetime(2025, 1, 1)),
        ("month", datetime(2024, 2, 29), datetime(2024, 2, 1), datetime(2024, 3, 1)),
        ("total", datetime(2024, 2, 29), None, None),
    ],
)
def test_budget_windows_are_utc_calendar_periods(
    period: str, moment: datetime, start: datetime | None, end: datetime | None
) -> None:
    window = budget_window(period, moment.replace(tzinfo=UTC).timestamp())  # type: ignore[arg-type]
    assert window.start == (start and start.replace(tzinfo=UTC))
    assert window.end == (end and end.replace(tzinfo=UTC))
    assert window.label.startswith(period)


# -- headers ----------------------------------------------------------------------------------


async def test_headers_follow_openais_format(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    admission = await limiter.admit(key_principal(LimitSet(rpm=50, tpm=1000)), MODEL, 100)
    assert admission.headers == {
        "x-ratelimit-limit-requests": "50",
        "x-ratelimit-remaining-requests": "49",
        "x-ratelimit-reset-requests": "1.2s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",
    }


async def test_headers_show_the_most_constraining_bucket(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(LimitsConfig(models={MODEL: LimitSet(tpm=100_000)}))
    principal = key_principal(LimitSet(rpm=50, tpm=200), user_id="u1", user_limits=LimitSet(rpm=10))
    admission = await limiter.admit(principal, MODEL, 20)
    assert admission.headers["x-ratelimit-limit-requests"] == "10"  # the user's
    assert admission.headers["x-ratelimit-remaining-requests"] == "9"
    assert admission.headers["x-ratelimit-reset-requests"] == "6s"
    assert admission.headers["x-ratelimit-limit-tokens"] == "200"  # the key's, not the model's
    assert admission.headers["x-ratelimit-remaining-tokens"] == "180"


async def test_no_limit_no_headers_and_nothing_stored(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    for principal in (ANONYMOUS, key_principal(), user_principal()):
        admission = await limiter.admit(principal, MODEL, 1000)
        assert admission.headers == {}
        assert admission.done  # nothing to settle
        await admission.settle(10, 1.0)


# -- spend seeded from the database -----------------------------------------------------------


async def record(
    database: Database, rows: list[tuple[datetime, str | None, str | None, float]]
) -> None:
    events = [
        InferenceEvent(
            request_id=uuid.uuid4().hex,
            created_at=created_at,
            endpoint="chat.completions",
            status="success",
            http_status=200,
            latency_ms=10.0,
            api_key_id=key_id,
            user_id=user_id,
            requested_model=MODEL,
            cost_usd=cost,
        )
        for created_at, key_id, user_id, cost in rows
    ]
    await TelemetryRepository(database).insert(events)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


async def test_spend_repository_sums_a_subject_since_a_moment(database: Database) -> None:
    await record(
        database,
        [
            (utc(2024, 4, 30, 23, 59, 59), "k1", "u1", 5.0),  # before the day
            (utc(2024, 5, 1, 0, 0, 0), "k1", "u1", 0.25),
            (utc(2024, 5, 1, 9, 30), "k1", "u1", 0.125),
            (utc(2024, 5, 1, 9, 45), "k2", "u1", 1.0),
            (utc(2024, 5, 1, 9, 50), None, "u2", 2.0),
        ],
    )
    spend = SpendRepository(database)
    day = utc(2024, 5, 1)
    assert await spend.spent("key", "k1", day) == pytest.approx(0.375)
    assert await spend.spent("key", "k1", None) == pytest.approx(5.375)
    assert await spend.spent("user", "u1", day) == pytest.approx(1.375)
    assert await spend.spent("user", "u1", day, utc(2024, 5, 1, 9, 40)) == pytest.approx(0.375)
    assert await spend.spent("key", "nobody", day) == 0.0
    # A naive moment is taken as UTC.
    assert await spend.spent("key", "k1", datetime(2024, 5, 1)) == pytest.approx(0.375)


async def test_redis_seeds_spend_from_the_database_once(
    database: Database, redis_url: str, redis_key_prefix: str, clock: FakeClock
) -> None:
    await record(
        database,
        [
            (utc(2024, 4, 30, 12), "k1", None, 9.0),  # last month: not counted
            (utc(2024, 5, 1, 8), "k1", None, 0.25),
            (utc(2024, 5, 1, 9), "k1", None, 0.5),
        ],
    )
    repository = SpendRepository(database)
    asked: list[tuple[str, str, datetime | None]] = []

    async def counted(kind: SpendSubject, subject_id: str, since: datetime | None) -> float:
        asked.append((kind, subject_id, since))
        return await repository.spent(kind, subject_id, since)

    def replica() -> Limiter:
        backend = RedisLimitBackend(limits_redis_client(redis_url), redis_key_prefix)
        return Limiter(LimitsConfig(backend="redis"), backend, counted, clock=clock)

    first, second = replica(), replica()
    principal = key_principal(LimitSet(budget_usd=1.0, budget_period="month"))
    try:
        admissions = await asyncio.gather(
            *(lim.admit(principal, MODEL, 1) for lim in (first, second) * 5)
        )
        assert 1 <= len(asked) <= 2  # each replica at most once, however many requests wait
        assert asked[0] == ("key", "k1", utc(2024, 5, 1))
        await admissions[0].settle(1, cost_usd=0.2)  # 0.75 + 0.20
        third = replica()
        try:
            await third.admit(principal, MODEL, 1)  # 0.95 < 1.00
            assert len(asked) <= 2  # seeded already: the database is not asked again
            await admissions[1].settle(1, cost_usd=0.1)  # 1.05: every replica refuses now
            for limiter in (first, second, third):
                with pytest.raises(BudgetExceededError, match=r"spent \$1.0500 of \$1.00"):
                    await limiter.admit(principal, MODEL, 1)
        finally:
            await third.aclose()
    finally:
        await first.aclose()
        await second.aclose()


async def test_memory_seeds_spend_from_the_database(database: Database, clock: FakeClock) -> None:
    await record(database, [(utc(2024, 5, 1, 8), "k1", "u1", 0.75)])
    limiter = Limiter(
        LimitsConfig(), MemoryLimitBackend(), SpendRepository(database).spent, clock=clock
    )
    admission = await limiter.admit(
        key_principal(LimitSet(budget_usd=1.0, budget_period="day")), MODEL, 1
    )
    await admission.settle(1, cost_usd=0.25)
    with pytest.raises(BudgetExceededError, match=r"spent \$1.0000 of \$1.00"):
        await limiter.admit(key_principal(LimitSet(budget_usd=1.0, budget_period="day")), MODEL, 1)


# -- the store going away: fail closed --------------------------------------------------------


async def test_redis_down_refuses_with_503(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = RedisLimitBackend(limits_redis_client(f"redis://127.0.0.1:{closed_port()}/0"), "p:")
    limiter = Limiter(LimitsConfig(backend="redis"), backend, None, clock=clock)
    caplog.set_level(logging.WARNING, logger="helixflow.security.limits")
    try:
        for principal in (
            key_principal(LimitSet(rpm=10)),
            key_principal(LimitSet(budget_usd=5.0)),
        ):
            with pytest.raises(ServiceUnavailableError) as refused:
                await limiter.admit(principal, MODEL, 1)
            error = refused.value
            assert (error.status_code, error.code) == (503, "limits_unavailable")
            assert "cannot be checked" in error.message
            assert error.headers == {"Retry-After": "1"}
        # Without any limit applying, Redis is not needed at all.
        assert (await limiter.admit(key_principal(), MODEL, 1)).headers == {}
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # twice within 30 s: one warning
    finally:
        await limiter.aclose()


async def test_the_database_down_while_seeding_refuses_with_503(clock: FakeClock) -> None:
    async def broken(kind: SpendSubject, subject_id: str, since: datetime | None) -> float:
        raise OSError("connection refused")

    limiter = Limiter(LimitsConfig(), MemoryLimitBackend(), broken, clock=clock)
    with pytest.raises(ServiceUnavailableError):
        await limiter.admit(key_principal(LimitSet(budget_usd=5.0)), MODEL, 1)


async def test_redis_lost_after_admit_does_not_fail_the_request(
    redis_url: str, redis_key_prefix: str, clock: FakeClock
) -> None:
    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    proxied = parts._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    backend = RedisLimitBackend(limits_redis_client(proxied), redis_key_prefix)
    limiter = Limiter(LimitsConfig(backend="redis"), backend, None, clock=clock, slot_ttl_s=60)
    principal = key_principal(LimitSet(rpm=10, tpm=1000, max_parallel=1))
    try:
        admission = await limiter.admit(principal, MODEL, 100)
        await proxy.cut()
        await admission.settle(50, 0.1)  # logged, not raised
        with pytest.raises(ServiceUnavailableError):
            await limiter.admit(principal, MODEL, 100)
        await proxy.restore()
        with pytest.raises(RateLimitError, match="parallel"):  # the slot was not given back
            await limiter.admit(principal, MODEL, 100)
        clock.advance(60)  # ... until its TTL
        await limiter.admit(principal, MODEL, 100)
    finally:
        await limiter.aclose()
        await proxy.close()


# -- building ---------------------------------------------------------------------------------


async def test_build_limiter_picks_the_backend(clean_env: None, redis_url: str) -> None:
    memory = build_limiter(Settings(), None)
    assert isinstance(memory.backend, MemoryLimitBackend)
    await memory.aclose()
    with pytest.raises(ConfigurationError, match="HELIXFLOW_REDIS_URL"):
        build_limiter(Settings(security={"limits": {"backend": "redis"}}), None)
    shared = build_limiter(
        Settings(security={"limits": {"backend": "redis"}}, redis={"url": redis_url}), None
    )
    assert isinstance(shared.backend, RedisLimitBackend)
    assert shared.backend.prefix == "helixflow:limits:"
    await shared.aclose()
