"""Session and prefix affinity: a conversation goes back to the target that holds its KV cache.

A bounded LRU map from a key (the session id, else a hash of the prompt's opening) to the
target that last served it, forgotten after ``ttl_s``.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable


def prefix_key(text: str, chars: int) -> str:
    """A short digest of the prompt's first ``chars`` characters."""
    return "p:" + hashlib.blake2b(text[:chars].encode(), digest_size=12).hexdigest()


def session_key(session: str) -> str:
    return "s:" + hashlib.blake2b(session.encode(), digest_size=12).hexdigest()


class AffinityMap:
    def __init__(
        self, *, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        target, at = entry
        if self._clock() - at > self._ttl_s:
            del self._entries[key]
            return None
        return target

    def put(self, key: str, target: str) -> None:
        if self._max <= 0:
            return
        self._entries[key] = (target, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
