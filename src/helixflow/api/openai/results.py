"""What an attempt on a target yields: a whole JSON reply, or a stream already under way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class JsonResult:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StreamResult:
    chunks: AsyncIterator[bytes]
    """SSE bytes; closing the iterator stops the work behind it."""
    headers: dict[str, str] = field(default_factory=dict)


Result = JsonResult | StreamResult
