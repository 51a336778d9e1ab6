"""A minimal, fast OpenAI-compatible upstream for gateway benchmarks (no model, no work).

``POST /v1/chat/completions`` answers at once: without ``stream`` a fixed small
``chat.completion`` (the reply ``Hello from the stub.``, with usage); with ``stream: true`` an
SSE stream of a role chunk, one chunk per reply token, a finish chunk, a usage chunk (with
``stream_options.include_usage``) and ``data: [DONE]``, each chunk its own write, as a real
server sends them. ``GET /v1/models`` lists the one model. The requested ``model`` is echoed
back. Replies are built once at start-up (only the model name and the id are patched in), so
the stub spends its CPU on HTTP, not on JSON.

Run it:  python benchmarks/stub_upstream.py --port 9000   (uvloop where installed)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from typing import Any

import orjson
from aiohttp import web

MODEL = "bench-model"
TOKENS: tuple[str, ...] = ("Hello", " from", " the", " stub", ".")
REPLY_TEXT = "".join(TOKENS)
PROMPT_TOKENS = 12

_ids = itertools.count(1)


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": len(TOKENS),
        "total_tokens": PROMPT_TOKENS + len(TOKENS),
    }


def completion(model: str) -> bytes:
    return orjson.dumps(
        {
            "id": f"chatcmpl-stub-{next(_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": REPLY_TEXT, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(),
        }
    )


def stream_events(model: str, include_usage: bool) -> list[bytes]:
    base: dict[str, Any] = {
        "id": f"chatcmpl-stub-{next(_ids)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": t}) for t in TOKENS]
    events.append(event({}, "stop"))
    if include_usage:
        events.append(
            b"data: " + orjson.dumps({**base, "choices": [], "usage": _usage()}) + b"\n\n"
        )
    events.append(b"data: [DONE]\n\n")
    return events


async def chat(request: web.Request) -> web.StreamResponse:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response(
            {"error": {"message": "bad JSON", "type": "invalid_request_error"}}, status=400
        )
    model = body.get("model") if isinstance(body, dict) else None
    model = model if isinstance(model, str) else MODEL
    if not body.get("stream"):
        return web.Response(body=completion(model), content_type="application/json")
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    for chunk in stream_events(model, include_usage):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


MODELS_BODY = orjson.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "stub"}]}
)


async def models(_: web.Request) -> web.Response:
    return web.Response(body=MODELS_BODY, content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
