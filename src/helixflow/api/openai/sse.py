"""Server-sent events: serialization and merging of concurrent streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import orjson

from helixflow.errors import HelixFlowError

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"


def event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(exc: HelixFlowError) -> bytes:
    return event(exc.envelope())


class ChunkWriter:
    """Serializes the chunks of one streamed reply. The fields every chunk repeats are
    encoded once; each chunk then only encodes its one choice."""

    def __init__(
        self,
        *,
        completion_id: str,
        object_name: str,
        created: int,
        model: str,
        fingerprint: str,
        include_usage: bool,
    ) -> None:
        head = orjson.dumps(
            {
                "id": completion_id,
                "object": object_name,
                "created": created,
                "model": model,
                "system_fingerprint": fingerprint,
            }
        )
        self._head = head[:-1]
        self._prefix = b"data: " + self._head + b',"choices":['
        self._suffix = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"

    def choice(self, payload: dict[str, Any]) -> bytes:
        return self._prefix + orjson.dumps(payload) + self._suffix

    def usage(self, totals: dict[str, Any]) -> bytes:
        return b"data: " + self._head + b',"choices":[],"usage":' + orjson.dumps(totals) + b"}\n\n"


async def merge(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Yield items from several async iterators as they come; closing this closes them all."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue[tuple[int, T | None, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((index, item, None))
        except BaseException as exc:  # forwarded to the consumer
            await queue.put((index, None, exc))
            return
        await queue.put((index, None, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    live = len(tasks)
    try:
        while live:
            _, received, exc = await queue.get()
            if exc is not None:
                raise exc
            if received is None:
                live -= 1
                continue
            yield received
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for stream in streams:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
