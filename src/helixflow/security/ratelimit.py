"""Token buckets, parallel-request slots and spend counters behind one protocol.

Two interchangeable backends hold the state: :class:`MemoryLimitBackend` (one process) and
:class:`RedisLimitBackend` (every replica sharing one Redis). The policy (which subjects, which
limits, what a refusal says) lives in ``limits.py``; a backend only stores and counts.

A bucket holds at most ``capacity`` and refills at ``rate`` per second. It is stored as its
level and the time that level was computed; a bucket nobody stored is full. A charge is taken
only when the level, refilled up to now, is at least ``min(amount, capacity)`` (so a request
larger than the whole capacity still passes once the bucket is full, leaving it negative
rather than being refused forever); later charges (reconciliation after the request) are taken
unconditionally and may drive the level below zero, which makes the next requests wait.

Acquiring is all-or-nothing: every bucket must have room and every slot set must be below its
limit, or nothing is taken. On Redis one Lua script reads and writes every key of a request,
so concurrent replicas cannot interleave; for Redis Cluster, put a hash tag in the key prefix
(``{helixflow}:limits:``) so that every key lives on one node.

Time is the caller's (epoch seconds). Replicas' clocks are assumed to agree to within NTP's
precision; a clock behind the stored time never moves a bucket backwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from helixflow.errors import ConfigurationError

__all__ = [
    "ACQUIRE_SCRIPT",
    "SEED_SCRIPT",
    "SETTLE_SCRIPT",
    "Acquired",
    "BucketCharge",
    "LimitBackend",
    "LimitStoreUnavailableError",
    "MemoryLimitBackend",
    "RedisLimitBackend",
    "SlotClaim",
    "SpendKey",
    "format_duration",
    "limits_redis_client",
    "refill",
]

REDIS_SOCKET_TIMEOUT_S = 1.0
"""Connect and command timeout: limits are checked on every request, and a Redis that does not
answer within this refuses the request (fail closed) rather than holding it."""
REDIS_MAX_CONNECTIONS = 64
"""Connections per replica; a burst waits for one (up to the socket timeout) instead of opening
one per request."""
BUCKET_TTL_MARGIN_MS = 1000
"""A bucket's key outlives the moment it is full again by this much (a missing bucket is full)."""


class LimitStoreUnavailableError(Exception):
    """The backend could not be asked (Redis unreachable, timed out, refused the script)."""


@dataclass(frozen=True, slots=True)
class BucketCharge:
    """``amount`` to take from the bucket stored at ``key``."""

    key: str
    capacity: float
    rate: float
    """Refill per second (a limit per minute over 60)."""
    amount: float


@dataclass(frozen=True, slots=True)
class SlotClaim:
    """A slot in the set stored at ``key``, which holds at most ``limit`` live members."""

    key: str
    limit: int


@dataclass(frozen=True, slots=True)
class SpendKey:
    """The spend counter of ``subject`` (``key:<id>``, ``user:<id>``) for one budget period."""

    subject: str
    period: str
    """``day:2024-05-01``, ``week:2024-04-29``, ``month:2024-05`` or ``total``."""


@dataclass(frozen=True, slots=True)
class Acquired:
    """What an acquire found: levels and slot counts after the charge when admitted, as found
    (refilled up to now) when not."""

    admitted: bool
    levels: tuple[float, ...]
    in_flight: tuple[int, ...]


class LimitBackend(Protocol):
    """Storage of buckets, slots and spend. Every method raises LimitStoreUnavailableError,
    and nothing else, when the store cannot be asked."""

    async def acquire(
        self,
        buckets: Sequence[BucketCharge],
        slots: Sequence[SlotClaim],
        member: str,
        now: float,
        slot_ttl_s: float,
    ) -> Acquired:
        """Take every charge and a slot (``member``, expiring after ``slot_ttl_s``) in every
        set, or nothing at all."""
        ...

    async def settle(
        self,
        buckets: Sequence[BucketCharge],
        slots: Sequence[str],
        member: str,
        spend: Sequence[SpendKey],
        cost: float,
        now: float,
    ) -> None:
        """Take each charge unconditionally (a negative amount gives back, up to capacity),
        free ``member``'s slots, and add ``cost`` to each spend counter that exists."""
        ...

    async def get_spend(self, keys: Sequence[SpendKey]) -> list[float | None]:
        """Each counter's value, None where it does not exist (never seeded, or expired)."""
        ...

    async def seed_spend(self, key: SpendKey, amount: float, ttl_s: float | None) -> float:
        """Create the counter with ``amount`` unless it exists; return its value either way."""
        ...

    async def aclose(self) -> None: ...


def refill(
    level: float, ts: float, capacity: float, rate: float, now: float
) -> tuple[float, float]:
    """A bucket's level and time at ``now``: the same arithmetic as the Lua scripts."""
    if now > ts:
        return min(capacity, level + (now - ts) * rate), now
    return level, ts


def format_duration(seconds: float) -> str:
    """OpenAI's ``x-ratelimit-reset-*`` format (Go's durations, to the millisecond, rounded
    up): ``0s``, ``120ms``, ``1s``, ``8.64s``, ``6m0s``, ``1h0m5s``."""
    ms = max(0, math.ceil(round(seconds * 1000, 6)))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# --- in-process ------------------------------------------------------------------------------


class MemoryLimitBackend:
    """State in dicts of this process. No locking: no method awaits between reading and
    writing, so asyncio tasks cannot interleave inside one."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._spend: dict[str, tuple[str, float]] = {}
        """subject -> (period, amount): a new period replaces the last one's counter."""

    async def acquire(
        self,
        buckets: Sequence[BucketCharge],
        slots: Sequence[SlotClaim],
        member: str,
        now: float,
        slot_ttl_s: float,
    ) -> Acquired:
        states = [self._bucket(b, now) for b in buckets]
        admitted = all(
            level >= min(b.amount, b.capacity)
            for b, (level, _) in zip(buckets, states, strict=True)
        )
        members = [self._live(claim.key, now) for claim in slots]
        admitted = admitted and all(
            len(live) < claim.limit for claim, live in zip(slots, members, strict=True)
        )
        if not admitted:
            return Acquired(False, tuple(s[0] for s in states), tuple(len(m) for m in members))
        levels = []
        for b, (level, ts) in zip(buckets, states, strict=True):
            self._buckets[b.key] = (level - b.amount, ts)
            levels.append(level - b.amount)
        for live in members:
            live[member] = now + slot_ttl_s
        return Acquired(True, tuple(levels), tuple(len(m) for m in members))

    async def settle(
        self,
        buckets: Sequence[BucketCharge],
        slots: Sequence[str],
        member: str,
        spend: Sequence[SpendKey],
        cost: float,
        now: float,
    ) -> None:
        for b in buckets:
            level, ts = self._bucket(b, now)
            self._buckets[b.key] = (min(b.capacity, level - b.amount), ts)
        for key in slots:
            live = self._slots.get(key)
            if live is not None:
                live.pop(member, None)
                if not live:
                    del self._slots[key]
        for counter in spend:
            found = self._spend.get(counter.subject)
            if found is not None and found[0] == counter.period:
                self._spend[counter.subject] = (counter.period, found[1] + cost)

    async def get_spend(self, keys: Sequence[SpendKey]) -> list[float | None]:
        out: list[float | None] = []
        for key in keys:
            found = self._spend.get(key.subject)
            out.append(found[1] if found is not None and found[0] == key.period else None)
        return out

    async def seed_spend(self, key: SpendKey, amount: float, ttl_s: float | None) -> float:
        found = self._spend.get(key.subject)
        if found is not None and found[0] == key.period:
            return found[1]
        self._spend[key.subject] = (key.period, amount)
        return amount

    async def aclose(self) -> None:
        self._buckets.clear()
        self._slots.clear()
        self._spend.clear()

    def _bucket(self, b: BucketCharge, now: float) -> tuple[float, float]:
        stored = self._buckets.get(b.key)
        if stored is None:
            return b.capacity, now
        return refill(stored[0], stored[1], b.capacity, b.rate, now)

    def _live(self, key: str, now: float) -> dict[str, float]:
        live = self._slots.setdefault(key, {})
        for gone in [m for m, expires in live.items() if expires <= now]:
            del live[gone]
        return live


# --- Redis -----------------------------------------------------------------------------------

_LUA_BUCKETS = """
local function load(key, cap, rate, now)
  local s = redis.call('HMGET', key, 'level', 'ts')
  local level, ts = tonumber(s[1]), tonumber(s[2])
  if level == nil or ts == nil then return cap, now end
  if now > ts then return math.min(cap, level + (now - ts) * rate), now end
  return level, ts
end
local function store(key, level, ts, cap, rate)
  redis.call('HSET', key, 'level', string.format('%.17g', level),
             'ts', string.format('%.17g', ts))
  local ttl = math.ceil((cap - level) / rate * 1000) + tonumber(ARGV[1])
  redis.call('PEXPIRE', key, math.min(ttl, 2592000000))
end
"""

ACQUIRE_SCRIPT = (
    _LUA_BUCKETS
    + """
-- KEYS: nb bucket hashes, then the slot sorted sets (member -> expiry time)
-- ARGV: margin_ms, now, nb, member, slot_expiry, slot_ttl_ms,
--       nb * (capacity, rate, amount), then one limit per slot set
local now, nb = tonumber(ARGV[2]), tonumber(ARGV[3])
local member, expiry, slot_ttl = ARGV[4], ARGV[5], tonumber(ARGV[6])
local ok = true
local levels, stamps, counts = {}, {}, {}
for i = 1, nb do
  local at = 6 + (i - 1) * 3
  local cap, rate, amount = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  levels[i], stamps[i] = load(KEYS[i], cap, rate, now)
  if levels[i] < math.min(amount, cap) then ok = false end
end
for j = nb + 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[j], '-inf', now)
  counts[j - nb] = redis.call('ZCARD', KEYS[j])
  if counts[j - nb] >= tonumber(ARGV[6 + nb * 3 + j - nb]) then ok = false end
end
if ok then
  for i = 1, nb do
    local at = 6 + (i - 1) * 3
    local cap, rate = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
    levels[i] = levels[i] - tonumber(ARGV[at + 3])
    store(KEYS[i], levels[i], stamps[i], cap, rate)
  end
  for j = nb + 1, #KEYS do
    redis.call('ZADD', KEYS[j], expiry, member)
    redis.call('PEXPIRE', KEYS[j], slot_ttl)
    counts[j - nb] = counts[j - nb] + 1
  end
end
local out = {ok and 1 or 0}
for i = 1, nb do out[#out + 1] = string.format('%.17g', levels[i]) end
for j = 1, #KEYS - nb do out[#out + 1] = counts[j] end
return out
"""
)
"""Admit all-or-nothing: every bucket has room and every slot set a free place, or no write."""

SETTLE_SCRIPT = (
    _LUA_BUCKETS
    + """
-- KEYS: nb bucket hashes, then ns slot sorted sets, then spend counters
-- ARGV: margin_ms, now, nb, ns, member, cost, nb * (capacity, rate, amount)
local now, nb, ns = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local member, cost = ARGV[5], ARGV[6]
for i = 1, nb do
  local at = 6 + (i - 1) * 3
  local cap, rate, amount = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local level, ts = load(KEYS[i], cap, rate, now)
  store(KEYS[i], math.min(cap, level - amount), ts, cap, rate)
end
for j = nb + 1, nb + ns do redis.call('ZREM', KEYS[j], member) end
for k = nb + ns + 1, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then redis.call('INCRBYFLOAT', KEYS[k], cost) end
end
return 1
"""
)
"""Reconcile after a request: take (or give back) tokens, free the slots, add the cost to the
spend counters that exist (a missing one is seeded from the database when next needed)."""

SEED_SCRIPT = """
-- KEYS[1]: a spend counter; ARGV: amount, ttl_ms (0: no expiry)
local ttl = tonumber(ARGV[2])
local set
if ttl > 0 then
  set = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl)
else
  set = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if set then return ARGV[1] end
return redis.call('GET', KEYS[1])
"""
"""SET NX, then the value that won: replicas seeding at once all read the first one's."""


def limits_redis_client(url: str) -> aioredis.Redis:
    """A client for limits: short timeouts, no retries, a bounded pool that a burst waits on."""
    try:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_MAX_CONNECTIONS,
            timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        raise ConfigurationError(f"HELIXFLOW_REDIS_URL is not a usable Redis URL: {exc}") from exc
    return aioredis.Redis(connection_pool=pool)


class RedisLimitBackend:
    """State in Redis under ``prefix``: ``b:<subject>:<dimension>`` buckets (hashes),
    ``p:<subject>`` slot sets (sorted sets scored by expiry, so a crashed replica's slots come
    back after the slot TTL) and ``s:<subject>:<period>`` spend counters (expiring a day after
    their period ends)."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._settle = client.register_script(SETTLE_SCRIPT)
        self._seed = client.register_script(SEED_SCRIPT)

    def _spend_key(self, key: SpendKey) -> str:
        return f"{self.prefix}s:{key.subject}:{key.period}"

    async def acquire(
        self,
        buckets: Sequence[BucketCharge],
        slots: Sequence[SlotClaim],
        member: str,
        now: float,
        slot_ttl_s: float,
    ) -> Acquired:
        keys = [self.prefix + b.key for b in buckets] + [self.prefix + c.key for c in slots]
        args: list[str | int] = [
            BUCKET_TTL_MARGIN_MS,
            repr(now),
            len(buckets),
            member,
            repr(now + slot_ttl_s),
            math.ceil(slot_ttl_s * 1000),
        ]
        for b in buckets:
            args += [repr(b.capacity), repr(b.rate), repr(b.amount)]
        args += [c.limit for c in slots]
        reply = await self._call(self._acquire, keys, args)
        levels = tuple(float(v) for v in reply[1 : 1 + len(buckets)])
        counts = tuple(int(v) for v in reply[1 + len(buckets) :])
        return Acquired(int(reply[0]) == 1, levels, counts)

    async def settle(
        self,
        buckets: Sequence[BucketCharge],
        slots: Sequence[str],
        member: str,
        spend: Sequence[SpendKey],
        cost: float,
        now: float,
    ) -> None:
        spend = spend if cost else []
        keys = (
            [self.prefix + b.key for b in buckets]
            + [self.prefix + key for key in slots]
            + [self._spend_key(key) for key in spend]
        )
        if not keys:
            return
        args: list[str | int] = [
            BUCKET_TTL_MARGIN_MS,
            repr(now),
            len(buckets),
            len(slots),
            member,
            repr(cost),
        ]
        for b in buckets:
            args += [repr(b.capacity), repr(b.rate), repr(b.amount)]
        await self._call(self._settle, keys, args)

    async def get_spend(self, keys: Sequence[SpendKey]) -> list[float | None]:
        if not keys:
            return []
        try:
            values = await self.client.mget([self._spend_key(key) for key in keys])
        except (RedisError, OSError) as exc:
            raise LimitStoreUnavailableError(f"Redis: {exc}") from exc
        return [None if v is None else float(v) for v in values]

    async def seed_spend(self, key: SpendKey, amount: float, ttl_s: float | None) -> float:
        ttl_ms = 0 if ttl_s is None else max(1, math.ceil(ttl_s * 1000))
        reply = await self._call(self._seed, [self._spend_key(key)], [repr(amount), ttl_ms])
        return float(reply)

    async def aclose(self) -> None:
        await self.client.aclose()

    @staticmethod
    async def _call(script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise LimitStoreUnavailableError(f"Redis: {exc}") from exc
