"""Responses that end generation as soon as the client goes away."""

from __future__ import annotations

import asyncio
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
    """Run ``work`` in this task, but cancel it if the client disconnects first (non-streaming
    replies; an upstream request is cut too, so a provider stops spending tokens on it).

    One watcher task per request, cancelling this one on a disconnect: cheaper than running
    the work in a task of its own and waiting on both."""
    current = asyncio.current_task()
    assert current is not None
    left = False

    def on_disconnect(watcher: asyncio.Future[None]) -> None:
        nonlocal left
        if not watcher.cancelled() and watcher.exception() is None:
            left = True
            current.cancel()

    watcher = asyncio.ensure_future(_wait_disconnect(request))
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if left:
            current.uncancel()
            raise ClientDisconnectedError(
                "the client closed the connection before the reply"
            ) from None
        raise
    finally:
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
