"""Responses that end generation as soon as the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from helixflow.errors import ClientDisconnectedError

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    """Starlette cancels the body iterator when the client disconnects; the generation
    stream's cleanup then frees the sequence at once."""
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it if the client disconnects first (non-streaming replies)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
    if task.cancelled():
        raise ClientDisconnectedError("the client closed the connection before the reply")
    return task.result()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
