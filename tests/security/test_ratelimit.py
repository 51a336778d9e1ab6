"""The limit backends: buckets, slots and spend counters, in-process and on the real Redis."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import redis

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
    refill,
)
from tests.security.conftest import closed_port
from tests.security.factories import T0

TTL = 600.0


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[LimitBackend]:
    if request.param == "memory":
        store: LimitBackend = MemoryLimitBackend()
    else:
        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_key_prefix")
        store = RedisLimitBackend(limits_redis_client(url), prefix)
    try:
        yield store
    finally:
        await store.aclose()


def bucket(key: str, capacity: float, amount: float, rate: float | None = None) -> BucketCharge:
    return BucketCharge(key, capacity, capacity / 60 if rate is None else rate, amount)


# -- pure functions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.12, "120ms"),
        (0.0001, "1ms"),
        (0.9994, "1s"),
        (1, "1s"),
        (1.2, "1.2s"),
        (8.64, "8.64s"),
        (59.9999, "1m0s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (74.562, "1m14.562s"),
        (3600, "1h0m0s"),
        (3725.5, "1h2m5.5s"),
    ],
)
def test_format_duration_is_openais(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_refill_caps_at_capacity_and_never_goes_back() -> None:
    assert refill(10, 100.0, 50, 1.0, 105.0) == (15, 105.0)
    assert refill(10, 100.0, 50, 1.0, 500.0) == (50, 500.0)
    assert refill(-20, 100.0, 50, 2.0, 110.0) == (0, 110.0)
    assert refill(10, 100.0, 50, 1.0, 90.0) == (10, 100.0)  # a clock behind: unchanged


# -- buckets ----------------------------------------------------------------------------------


async def test_a_new_bucket_is_full_and_refuses_once_empty(backend: LimitBackend) -> None:
    charge = bucket("b:key:k:requests", 3, 1)
    got = [await backend.acquire([charge], [], f"m{i}", T0, TTL) for i in range(4)]
    assert [g.admitted for g in got] == [True, True, True, False]
    assert [g.levels for g in got] == [(2.0,), (1.0,), (0.0,), (0.0,)]


async def test_refill_is_continuous(backend: LimitBackend) -> None:
    charge = bucket("b:key:k:requests", 60, 1)  # one per second
    for i in range(60):
        assert (await backend.acquire([charge], [], f"m{i}", T0, TTL)).admitted
    assert not (await backend.acquire([charge], [], "x", T0 + 0.5, TTL)).admitted
    got = await backend.acquire([charge], [], "y", T0 + 1.0, TTL)
    assert got == Acquired(True, (0.0,), ())
    assert not (await backend.acquire([charge], [], "z", T0 + 1.5, TTL)).admitted
    full = await backend.acquire([charge], [], "w", T0 + 1000, TTL)
    assert full.levels == (59.0,)


async def test_all_or_nothing(backend: LimitBackend) -> None:
    key = bucket("b:key:k:requests", 10, 1)
    model = bucket("b:model:m:requests", 1, 1)
    assert (await backend.acquire([key, model], [], "a", T0, TTL)).admitted
    refused = await backend.acquire([key, model], [], "b", T0, TTL)
    assert refused == Acquired(False, (9.0, 0.0), ())
    # Nothing was taken from the key's bucket by the refused request.
    assert (await backend.acquire([key], [], "c", T0, TTL)).levels == (8.0,)


async def test_a_charge_larger_than_capacity_passes_only_when_full(backend: LimitBackend) -> None:
    tokens = bucket("b:key:k:tokens", 100, 250)
    first = await backend.acquire([tokens], [], "a", T0, TTL)
    assert first == Acquired(True, (-150.0,), ())
    assert not (await backend.acquire([tokens], [], "b", T0 + 60, TTL)).admitted  # level -50
    assert (await backend.acquire([tokens], [], "c", T0 + 150, TTL)).admitted


async def test_settle_takes_unconditionally_and_refunds_up_to_capacity(
    backend: LimitBackend,
) -> None:
    tokens = bucket("b:key:k:tokens", 100, 40)
    assert (await backend.acquire([tokens], [], "a", T0, TTL)).levels == (60.0,)
    await backend.settle([bucket("b:key:k:tokens", 100, 90)], [], "a", [], 0.0, T0)
    zero = bucket("b:key:k:tokens", 100, 0)
    refused = await backend.acquire([zero], [], "b", T0, TTL)
    assert refused == Acquired(False, (-30.0,), ())  # negative: even nothing must wait
    await backend.settle([bucket("b:key:k:tokens", 100, -500)], [], "a", [], 0.0, T0)
    assert (await backend.acquire([zero], [], "c", T0, TTL)).levels == (100.0,)


async def test_same_operations_give_the_same_numbers_on_both_backends(
    redis_url: str, redis_key_prefix: str
) -> None:
    """The Lua scripts and the Python backend do the same arithmetic, to the last bit."""
    memory = MemoryLimitBackend()
    shared = RedisLimitBackend(limits_redis_client(redis_url), redis_key_prefix)
    rng = random.Random(7)
    now = T0
    try:
        for i in range(300):
            now += rng.choice([0.0, 0.001, 0.37, 1.3, 7.0])
            capacity = 40.0
            charges = [
                BucketCharge("b:key:k:tokens", capacity, capacity / 60, rng.randint(0, 30)),
                BucketCharge("b:user:u:requests", 7.0, 7 / 60, 1.0),
            ]
            slots = [SlotClaim("p:key:k", 3)]
            if rng.random() < 0.3:
                settled = [
                    BucketCharge("b:key:k:tokens", capacity, capacity / 60, rng.randint(-9, 60))
                ]
                member = f"m{rng.randrange(max(i, 1))}"
                for store in (memory, shared):
                    await store.settle(settled, ["p:key:k"], member, [], 0.0, now)
            got_memory = await memory.acquire(charges, slots, f"m{i}", now, 30.0)
            got_redis = await shared.acquire(charges, slots, f"m{i}", now, 30.0)
            assert got_memory == got_redis, i
    finally:
        await memory.aclose()
        await shared.aclose()


# -- parallel slots ---------------------------------------------------------------------------


async def test_slots_are_held_until_settled(backend: LimitBackend) -> None:
    slot = SlotClaim("p:key:k", 2)
    assert (await backend.acquire([], [slot], "a", T0, TTL)).in_flight == (1,)
    assert (await backend.acquire([], [slot], "b", T0, TTL)).in_flight == (2,)
    assert await backend.acquire([], [slot], "c", T0, TTL) == Acquired(False, (), (2,))
    await backend.settle([], ["p:key:k"], "a", [], 0.0, T0)
    await backend.settle([], ["p:key:k"], "a", [], 0.0, T0)  # twice: frees one slot only
    assert (await backend.acquire([], [slot], "c", T0, TTL)).in_flight == (2,)
    assert not (await backend.acquire([], [slot], "d", T0, TTL)).admitted


async def test_a_slot_never_released_comes_back_after_its_ttl(backend: LimitBackend) -> None:
    slot = SlotClaim("p:user:u", 1)
    assert (await backend.acquire([], [slot], "crashed", T0, 30.0)).admitted
    assert not (await backend.acquire([], [slot], "b", T0 + 29.9, 30.0)).admitted
    assert (await backend.acquire([], [slot], "b", T0 + 30.0, 30.0)).admitted


async def test_a_refused_bucket_takes_no_slot(backend: LimitBackend) -> None:
    empty = bucket("b:key:k:requests", 1, 1)
    slot = SlotClaim("p:key:k", 1)
    assert (await backend.acquire([empty], [], "a", T0, TTL)).admitted
    assert not (await backend.acquire([empty], [slot], "b", T0, TTL)).admitted
    assert (await backend.acquire([], [slot], "c", T0, TTL)).in_flight == (1,)


# -- spend ------------------------------------------------------------------------------------


async def test_spend_is_seeded_once_and_counted_after(backend: LimitBackend) -> None:
    key = SpendKey("key:k", "day:2024-05-01")
    assert await backend.get_spend([key]) == [None]
    await backend.settle([], [], "a", [key], 5.0, T0)  # not seeded yet: not created
    assert await backend.get_spend([key]) == [None]
    assert await backend.seed_spend(key, 1.5, 3600) == 1.5
    assert await backend.seed_spend(key, 99.0, 3600) == 1.5  # the first seed stays
    await backend.settle([], [], "a", [key], 0.25, T0)
    other = SpendKey("user:u", "day:2024-05-01")
    assert await backend.get_spend([key, other]) == [1.75, None]


async def test_a_new_period_has_its_own_counter(backend: LimitBackend) -> None:
    today = SpendKey("key:k", "day:2024-05-01")
    tomorrow = SpendKey("key:k", "day:2024-05-02")
    await backend.seed_spend(today, 3.0, 3600)
    assert await backend.seed_spend(tomorrow, 0.5, 3600) == 0.5
    await backend.settle([], [], "a", [tomorrow], 0.5, T0)
    assert (await backend.get_spend([tomorrow]))[0] == 1.0


# -- Redis specifics --------------------------------------------------------------------------


async def test_redis_keys_expire(redis_url: str, redis_key_prefix: str) -> None:
    store = RedisLimitBackend(limits_redis_client(redis_url), redis_key_prefix)
    try:
        await store.acquire(
            [bucket("b:key:k:requests", 60, 30)], [SlotClaim("p:key:k", 5)], "a", T0, 45.0
        )
        await store.seed_spend(SpendKey("key:k", "day:2024-05-01"), 1.0, 7200.0)
        await store.seed_spend(SpendKey("key:k", "total"), 1.0, None)
    finally:
        await store.aclose()
    with redis.Redis.from_url(redis_url) as direct:
        # Full again in 30 s (30 missing at one per second), plus a second's margin.
        assert 30_000 < direct.pttl(redis_key_prefix + "b:key:k:requests") <= 31_000
        assert 44_000 < direct.pttl(redis_key_prefix + "p:key:k") <= 45_000
        assert 7_100_000 < direct.pttl(redis_key_prefix + "s:key:k:day:2024-05-01") <= 7_200_000
        assert direct.pttl(redis_key_prefix + "s:key:k:total") == -1


async def test_redis_down_raises_store_unavailable() -> None:
    store = RedisLimitBackend(limits_redis_client(f"redis://127.0.0.1:{closed_port()}/0"), "p:")
    try:
        with pytest.raises(LimitStoreUnavailableError, match="Redis"):
            await store.acquire([bucket("b:key:k:requests", 5, 1)], [], "a", T0, TTL)
        with pytest.raises(LimitStoreUnavailableError):
            await store.get_spend([SpendKey("key:k", "total")])
        with pytest.raises(LimitStoreUnavailableError):
            await store.seed_spend(SpendKey("key:k", "total"), 0.0, None)
        with pytest.raises(LimitStoreUnavailableError):
            await store.settle([], ["p:key:k"], "a", [], 0.0, T0)
    finally:
        await store.aclose()
