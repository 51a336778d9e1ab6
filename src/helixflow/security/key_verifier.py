"""API-key verification, the hot path: every request with a key goes through here.

A verified (or unknown) key is cached in memory with its owner for ``cache_s`` seconds, so
that a request rarely touches the database; users are cached the same way (the auth
middleware asks for a key's owner or a token's user on every request). Whoever changes a key
or a user through :class:`helixflow.security.accounts.AccountService` evicts it here at once;
on other replicas the change is seen within ``cache_s``. ``last_used_at`` is not written per
request but in batches, at most every :data:`TOUCH_INTERVAL_S`, by a background task.

Kept apart from the account operations because it is a cache with its own timing and
background writes, and none of its logic is about who may do what.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from helixflow.errors import AuthenticationError
from helixflow.security.identity import KeyRecord, UserRecord
from helixflow.security.keys import key_hash, looks_like_key
from helixflow.store.repositories.api_keys import ApiKeyRepository
from helixflow.store.repositories.users import UserRepository

log = logging.getLogger(__name__)

KEY_CACHE_S = 5.0
KEY_CACHE_MAX = 10_000
"""Entries kept in each cache (keys, users); the least recently used go first."""
TOUCH_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class _Cached:
    key: KeyRecord | None
    owner: UserRecord | None
    until: float


class KeyVerifier:
    """Verifies API keys and finds users, through a short-lived cache; records key use.

    ``hash_key`` is the server's key-hashing key (``keys.KEY_HASH_PURPOSE``). ``clock`` is a
    monotonic clock in seconds (cache expiry, flush interval); ``now`` gives aware UTC
    datetimes (expiry of keys, ``last_used_at``). ``cache_s`` 0 disables the caches.
    """

    def __init__(
        self,
        keys: ApiKeyRepository,
        users: UserRepository,
        hash_key: bytes,
        *,
        cache_s: float,
        clock: Callable[[], float],
        now: Callable[[], datetime],
    ) -> None:
        self.cache_s = cache_s
        self._keys = keys
        self._users = users
        self._hash_key = hash_key
        self._clock = clock
        self._now = now
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._user_cache: OrderedDict[str, tuple[UserRecord | None, float]] = OrderedDict()
        self._pending_use: dict[str, datetime] = {}
        self._last_flush: float | None = None
        self._flush_task: asyncio.Task[None] | None = None

    async def verify(self, plaintext: str) -> tuple[KeyRecord, UserRecord | None]:
        """The key and its owner (None: an owner-less key); AuthenticationError (401) with
        code ``invalid_api_key``, ``expired_api_key``, ``revoked_api_key`` or
        ``inactive_user`` (its owner is deactivated) otherwise."""
        if not looks_like_key(plaintext):
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        entry = await self._lookup(key_hash(self._hash_key, plaintext))
        key = entry.key
        if key is None:
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        if key.revoked_at is not None:
            raise AuthenticationError("This API key has been revoked.", code="revoked_api_key")
        now = self._now()
        if key.expires_at is not None and key.expires_at <= now:
            raise AuthenticationError("This API key has expired.", code="expired_api_key")
        if key.owner_id is not None and (entry.owner is None or not entry.owner.active):
            raise AuthenticationError(
                "The owner of this API key is deactivated.", code="inactive_user"
            )
        self._mark_used(key.id, now)
        return key, entry.owner

    async def _lookup(self, hashed: str) -> _Cached:
        tick = self._clock()
        cached = self._cache.get(hashed)
        if cached is not None and cached.until > tick:
            return cached
        key = await self._keys.get_by_hash(hashed)
        owner = None
        if key is not None and key.owner_id is not None:
            owner = await self.get_user(key.owner_id)
        entry = _Cached(key, owner, tick + self.cache_s)
        if self.cache_s > 0:
            self._cache[hashed] = entry
            self._cache.move_to_end(hashed)
            while len(self._cache) > KEY_CACHE_MAX:
                self._cache.popitem(last=False)
        return entry

    async def get_user(self, user_id: str) -> UserRecord | None:
        """The user, or None, cached for ``cache_s``."""
        tick = self._clock()
        cached = self._user_cache.get(user_id)
        if cached is not None and cached[1] > tick:
            return cached[0]
        user = await self._users.get(user_id)
        if self.cache_s > 0:
            self._user_cache[user_id] = (user, tick + self.cache_s)
            self._user_cache.move_to_end(user_id)
            while len(self._user_cache) > KEY_CACHE_MAX:
                self._user_cache.popitem(last=False)
        return user

    def forget_user(self, user_id: str) -> None:
        """Drop the cached user (not their keys): the next :meth:`get_user` reads it again."""
        self._user_cache.pop(user_id, None)

    def evict(self, *, key_ids: Iterable[str] = (), owner_id: str | None = None) -> None:
        """Drop the keys ``key_ids`` and, given ``owner_id``, that user and all their keys."""
        if owner_id is not None:
            self._user_cache.pop(owner_id, None)
        ids = set(key_ids)
        for hashed, entry in list(self._cache.items()):
            key = entry.key
            if key is not None and (
                key.id in ids or (owner_id is not None and key.owner_id == owner_id)
            ):
                del self._cache[hashed]

    # --- last use ----------------------------------------------------------------------------

    def _mark_used(self, key_id: str, at: datetime) -> None:
        self._pending_use[key_id] = at
        tick = self._clock()
        due = self._last_flush is None or tick - self._last_flush >= TOUCH_INTERVAL_S
        if due and (self._flush_task is None or self._flush_task.done()):
            self._last_flush = tick
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_quietly())

    async def flush(self) -> None:
        """Write the pending ``last_used_at`` times now."""
        batch, self._pending_use = self._pending_use, {}
        try:
            await self._keys.touch(batch)
        except BaseException:
            for key_id, at in batch.items():  # keep them for the next flush
                self._pending_use.setdefault(key_id, at)
            raise

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except Exception as exc:
            log.warning("could not record when API keys were last used: %s", exc)

    async def close(self) -> None:
        """Wait for a flush under way and write what is pending (at shutdown)."""
        if self._flush_task is not None:
            with contextlib.suppress(Exception):
                await self._flush_task
        await self._flush_quietly()
