"""Exact-match cache of deterministic replies (temperature 0 or a seed).

A repeated deterministic request is answered without spending a model's time on it. The key
is the endpoint plus a hash of the normalized request, so the same request sent with keys in
another order, or streamed instead of not, hits the same entry; the stored value is the JSON
reply exactly as it was sent, and a streamed request gets it replayed as SSE
(``cache_replay.replay_chunks``).

Two backends behind one protocol: an in-process LRU with a TTL and a byte budget (the embedded
default), and Redis, shared by every replica. The cache is an optimization only: no error in it
may fail or noticeably delay a request, so Redis errors are logged (rate-limited) and read as a
miss, and Redis is left alone for a moment after one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from helixflow.errors import ConfigurationError
from helixflow.router.cache_replay import replay_chunks
from helixflow.routing_config import ResponseCacheConfig

__all__ = [
    "IGNORED_FIELDS",
    "CacheStats",
    "CachedReply",
    "MemoryResponseCache",
    "RedisResponseCache",
    "ResponseCache",
    "build_cache",
    "cache_key",
    "redis_client",
    "replay_chunks",
]

logger = logging.getLogger(__name__)

IGNORED_FIELDS: frozenset[str] = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier"}
)
"""Request fields that do not change the reply's content (how it is delivered, who asked, what
is kept of it), so two requests differing only in them share an entry."""

REDIS_SOCKET_TIMEOUT_S = 0.25
"""Connect and command timeout of a client built from a URL: a slow Redis must cost a request
little, since the request can always go to a model instead."""


def cache_key(endpoint: str, body: Mapping[str, Any]) -> str | None:
    """The cache key of a request to ``endpoint``, or None when its reply is not deterministic
    (sampled: temperature above 0, the default 1.0 when absent, and no seed).

    ``model`` is part of the body, so each requested model (or group) has its own entries.
    Fields in ``IGNORED_FIELDS`` and top-level fields set to null are left out, and keys are
    sorted at every depth, so equal requests spelled differently share a key.
    """
    if not _deterministic(body):
        return None
    rest = {k: v for k, v in body.items() if k not in IGNORED_FIELDS and v is not None}
    try:
        encoded = orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # e.g. an integer past 64 bits: just not cached
        return None
    return f"{endpoint}:{hashlib.sha256(encoded).hexdigest()}"


def _deterministic(body: Mapping[str, Any]) -> bool:
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature")
    return (
        isinstance(temperature, int | float)
        and not isinstance(temperature, bool)
        and temperature == 0
    )


@dataclass(frozen=True, slots=True)
class CachedReply:
    """One stored reply."""

    body: bytes
    """The JSON reply exactly as it was sent (a ``chat.completion`` or ``text_completion``)."""
    target: str
    """The target that produced it (reported in ``x-helixflow-target`` on a hit)."""
    stored_at: float
    """Epoch seconds when it was stored (its age on a hit)."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was built, for metrics and the admin API."""

    hits: int
    misses: int
    stores: int
    evictions: int
    """Entries dropped to stay within the byte budget (memory backend)."""
    entries: int | None
    """Entries held now; None where the backend cannot tell cheaply (Redis)."""
    bytes: int | None
    """Approximate memory held now; None where the backend cannot tell cheaply (Redis)."""
    errors: int = 0
    """Backend failures read as a miss or a refused store (Redis unreachable...)."""


class ResponseCache(Protocol):
    """What the router needs of a cache backend. No method raises for a backend failure."""

    backend: str

    async def get(self, key: str) -> CachedReply | None: ...

    async def put(self, key: str, reply: CachedReply) -> bool:
        """Store ``reply``; False when it was not stored (too big, backend unavailable)."""
        ...

    async def close(self) -> None: ...

    def stats(self) -> CacheStats: ...


@dataclass(slots=True)
class _Entry:
    reply: CachedReply
    expires_at: float
    size: int


class MemoryResponseCache:
    """In-process LRU with a TTL and a byte budget: the least recently used entries go first
    once the entries' approximate size passes ``max_bytes``.

    No locking: every method runs to completion without awaiting, so asyncio tasks cannot
    interleave inside one.
    """

    backend = "memory"
    ENTRY_OVERHEAD = 256
    """Bytes counted per entry beyond its key, target and body: the Python objects holding it.
    Without it a flood of tiny replies would hold far more memory than the budget says."""

    def __init__(
        self,
        ttl_s: float,
        max_bytes: int,
        max_entry_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s}")
        if max_bytes < 0 or max_entry_bytes < 0:
            raise ValueError("max_bytes and max_entry_bytes must not be negative")
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._max_entry_bytes = max_entry_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._stores = self._evictions = 0

    @classmethod
    def entry_size(cls, key: str, reply: CachedReply) -> int:
        """What one entry counts against ``max_bytes``."""
        return len(key) + len(reply.target) + len(reply.body) + cls.ENTRY_OVERHEAD

    async def get(self, key: str) -> CachedReply | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= self._clock():
            self._remove(key)
            entry = None
        if entry is None:
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return entry.reply

    async def put(self, key: str, reply: CachedReply) -> bool:
        size = self.entry_size(key, reply)
        if len(reply.body) > self._max_entry_bytes or size > self._max_bytes:
            return False
        if key in self._entries:
            self._remove(key)
        self._entries[key] = _Entry(reply, self._clock() + self._ttl_s, size)
        self._bytes += size
        self._stores += 1
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
            self._evictions += 1
        return True

    def _remove(self, key: str) -> None:
        self._bytes -= self._entries.pop(key).size

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            stores=self._stores,
            evictions=self._evictions,
            entries=len(self._entries),
            bytes=self._bytes,
        )


_REDIS_FORMAT = 1
"""Version of the stored value's layout; a replica reads another version as a miss, so
replicas of different releases can share a Redis during a rolling upgrade."""


class RedisResponseCache:
    """Entries in Redis, shared by every replica; Redis expires them (``SET ... PX``).

    A value is a one-line JSON header (format version, target, stored_at), a newline, then the
    reply's bytes untouched. After a Redis error the cache answers "miss" without asking Redis
    for ``pause_after_error_s``, so an unreachable Redis costs one request a timeout, not every
    request; the warning is logged at most once per ``warn_every_s``.
    """

    backend = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        ttl_s: float,
        max_entry_bytes: int,
        key_prefix: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        pause_after_error_s: float = 1.0,
        warn_every_s: float = 30.0,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s}")
        self._client = client
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._max_entry_bytes = max_entry_bytes
        self._prefix = key_prefix
        self._clock = clock
        self._pause_s = pause_after_error_s
        self._warn_every_s = warn_every_s
        self._paused_until: float | None = None
        self._warned_at: float | None = None
        self._hits = self._misses = self._stores = self._errors = 0

    async def get(self, key: str) -> CachedReply | None:
        reply = await self._fetch(key)
        if reply is None:
            self._misses += 1
        else:
            self._hits += 1
        return reply

    async def _fetch(self, key: str) -> CachedReply | None:
        if self._paused():
            return None
        try:
            raw = await self._client.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            self._failed("read", exc)
            return None
        if raw is None:
            return None
        # A client built with decode_responses hands back text; the reply is UTF-8 JSON.
        reply = _decode(raw.encode() if isinstance(raw, str) else raw)
        if reply is None:
            self._warn("response cache: unreadable entry in Redis (another release?); ignored")
        return reply

    async def put(self, key: str, reply: CachedReply) -> bool:
        if len(reply.body) > self._max_entry_bytes or self._paused():
            return False
        try:
            await self._client.set(self._prefix + key, _encode(reply), px=self._ttl_ms)
        except (RedisError, OSError) as exc:
            self._failed("write", exc)
            return False
        self._stores += 1
        return True

    def _paused(self) -> bool:
        if self._paused_until is None:
            return False
        if self._clock() < self._paused_until:
            return True
        self._paused_until = None
        return False

    def _failed(self, action: str, exc: BaseException) -> None:
        self._errors += 1
        self._paused_until = self._clock() + self._pause_s
        self._warn(
            f"response cache: Redis {action} failed ({type(exc).__name__}: {exc}); "
            "serving without the cache"
        )

    def _warn(self, message: str) -> None:
        now = self._clock()
        if self._warned_at is None or now - self._warned_at >= self._warn_every_s:
            self._warned_at = now
            logger.warning(message)

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError) as exc:
            logger.debug("response cache: closing the Redis client failed: %s", exc)

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            stores=self._stores,
            evictions=0,
            entries=None,
            bytes=None,
            errors=self._errors,
        )


def _encode(reply: CachedReply) -> bytes:
    header = {"v": _REDIS_FORMAT, "target": reply.target, "stored_at": reply.stored_at}
    return orjson.dumps(header) + b"\n" + reply.body  # orjson never writes a raw newline


def _decode(raw: bytes) -> CachedReply | None:
    head, newline, body = raw.partition(b"\n")
    if not newline:
        return None
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(header, dict) or header.get("v") != _REDIS_FORMAT:
        return None
    target, stored_at = header.get("target"), header.get("stored_at")
    if not isinstance(target, str) or not isinstance(stored_at, int | float):
        return None
    return CachedReply(body=body, target=target, stored_at=float(stored_at))


def redis_client(url: str) -> aioredis.Redis:
    """A client for the cache: short timeouts and no retries, since a miss is always an
    acceptable answer (the library's default retries ten times with backoff)."""
    try:
        return aioredis.Redis.from_url(
            url,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        raise ConfigurationError(f"HELIXFLOW_REDIS_URL is not a usable Redis URL: {exc}") from exc


def _memory(config: ResponseCacheConfig, redis_url: str | None) -> ResponseCache:
    return MemoryResponseCache(config.ttl_s, config.max_bytes, config.max_entry_bytes)


def _redis(config: ResponseCacheConfig, redis_url: str | None) -> ResponseCache:
    if not redis_url:
        raise ConfigurationError(
            "the response cache backend is 'redis' but no Redis URL is set: set "
            "HELIXFLOW_REDIS_URL (e.g. redis://host:6379/0), or use the 'memory' backend"
        )
    return RedisResponseCache(
        redis_client(redis_url), config.ttl_s, config.max_entry_bytes, config.key_prefix
    )


_BACKENDS: Mapping[str, Callable[[ResponseCacheConfig, str | None], ResponseCache]] = (
    MappingProxyType({"memory": _memory, "redis": _redis})
)


def build_cache(config: ResponseCacheConfig, redis_url: str | None) -> ResponseCache | None:
    """The configured cache, or None when caching is off. Connects lazily: an unreachable
    Redis shows up as misses and warnings, not as a failed start."""
    if not config.enabled:
        return None
    return _BACKENDS[config.backend](config, redis_url)
