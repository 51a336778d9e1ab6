"""Token streams: UTF-8 across token boundaries, stop strings, and shared prompt prefixes."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class StopMatcher:
    """Finds stop strings in streamed text, even when they span tokens, and never emits them.

    Text that could still be the start of a stop string is held back until the next piece
    decides it; :meth:`flush` releases it when generation ends for another reason.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add generated text; return what may be emitted now (empty once a stop matched)."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        self._pending += text
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        keep = self._partial_suffix()
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _first_stop(self) -> int | None:
        positions = [p for p in (self._pending.find(s) for s in self._stops) if p >= 0]
        return min(positions) if positions else None

    def _partial_suffix(self) -> int:
        """Length of the longest suffix of the pending text that starts some stop string."""
        pending = self._pending
        for length in range(min(len(pending), self._longest - 1), 0, -1):
            tail = pending[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0


class Utf8Stream:
    """Decodes token bytes incrementally; a character split across tokens waits for its end."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists (binary search over C-speed
    slice compares)."""
    hi = min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
