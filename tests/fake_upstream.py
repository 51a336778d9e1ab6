"""A fake upstream OpenAI-compatible provider: a real HTTP server for router tests.

``FakeUpstream`` runs an aiohttp server on its own event loop in a background thread, on
127.0.0.1 and a free port, so synchronous tests (and a HelixFlow server in a subprocess,
configured with ``providers: [{name: ..., base_url: fake.base_url}]``) can talk to it over
real sockets::

    with FakeUpstream("acme") as fake:
        fake.enqueue(status(429, retry_after=1), delay(0.2))  # the next two POSTs
        fake.default = chunk_delay(0.01)  # every request after them
        ...
        assert fake.count("/v1/chat/completions") == 3

It speaks enough of OpenAI's API for a gateway: ``GET /v1/models``, ``POST
/v1/chat/completions`` and ``POST /v1/completions`` (JSON or, with ``stream: true``, SSE: for
chat a role chunk, one chunk per reply token, a finish chunk, a usage chunk with ``choices:
[]`` when ``stream_options.include_usage`` is true, then ``data: [DONE]``), and ``POST
/v1/embeddings`` (small deterministic unit vectors; floats or base64 as asked). The reply is
deterministic and names the upstream: by default the tokens ``["Hello", " from", " <name>",
"."]``; ``max_tokens`` (or ``max_completion_tokens``) below that cuts the reply with
``finish_reason: "length"``. ``usage.prompt_tokens`` is a rough word count of the prompt,
``completion_tokens`` the number of reply tokens sent.

Behaviours (``Behaviour``, made with ``ok()``, ``delay()``, ``chunk_delay()``, ``status()``,
``close_after()``, ``hang()``, or directly to combine several) apply per request: each POST
takes the first queued behaviour (``enqueue``) whose ``path`` matches, else ``default``. A
``GET /v1/models`` (a health probe) takes only queued behaviours that name its path, else the
default. Everything is thread-safe and can change at any time from the test thread.

Every request is recorded (``requests``: ``RecordedRequest(path, headers, body, time)``, headers
with lower-case names, the JSON body or None, ``time.monotonic()`` at arrival, comparable with
other processes' monotonic clocks on the same machine). ``down()`` stops listening and cuts every
open connection (like a crashed host: new connections are refused); ``up()`` listens again on the
same port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import math
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple, NoReturn

from aiohttp import web

__all__ = [
    "Behaviour",
    "FakeUpstream",
    "RecordedRequest",
    "chunk_delay",
    "close_after",
    "delay",
    "error_body",
    "hang",
    "ok",
    "status",
]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MODELS = "/v1/models"

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout_error", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_body(code: int, message: str, *, upstream: str = "fake") -> dict[str, Any]:
    """OpenAI's error envelope for an HTTP status."""
    kind, err_code = _ERROR_TYPES.get(code, ("server_error" if code >= 500 else "api_error", None))
    return {
        "error": {
            "message": f"{upstream}: {message}",
            "type": kind,
            "param": None,
            "code": err_code,
        }
    }


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the fake answers one request. The fields combine: e.g. a delay, then a stream
    with pauses between chunks that is cut after 3 chunks."""

    delay_s: float = 0.0
    """Wait before the response starts (status line and headers)."""
    chunk_delay_s: float = 0.0
    """Wait between two SSE events of a stream; a non-stream reply waits this once per token
    before it is sent (as if generating)."""
    status: int = 200
    """Anything but 200 answers with this status and ``body`` (OpenAI's error envelope by
    default), also for a stream request, instead of a reply."""
    retry_after: float | None = None
    """Sent as ``Retry-After`` (seconds, as given: ``1`` or ``0.5``) with an error status."""
    body: Mapping[str, Any] | None = None
    """Error body; None means ``error_body(status, ...)``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra response headers (any status)."""
    close_after: int | None = None
    """Stream: send this many SSE events (for chat the first is the role chunk), then close
    the connection with no finish chunk, no usage and no ``[DONE]``. Non-stream: close the
    connection without any response (whatever the number)."""
    hang: bool = False
    """Never answer; the connection stays open until ``reset()``, ``down()`` or ``stop()``."""
    tokens: tuple[str, ...] | None = None
    """Reply tokens for this request instead of the upstream's ``reply_tokens``."""


def ok() -> Behaviour:
    """Answer at once."""
    return Behaviour()


def delay(seconds: float) -> Behaviour:
    """Wait ``seconds`` before the response starts."""
    return Behaviour(delay_s=seconds)


def chunk_delay(seconds: float) -> Behaviour:
    """Wait ``seconds`` between the chunks of a stream (per token for a non-stream reply)."""
    return Behaviour(chunk_delay_s=seconds)


def status(
    code: int,
    retry_after: float | None = None,
    body: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Behaviour:
    """Answer with HTTP ``code`` and an OpenAI error envelope (or ``body``)."""
    return Behaviour(status=code, retry_after=retry_after, body=body, headers=headers or {})


def close_after(n_chunks: int) -> Behaviour:
    """Stream: send ``n_chunks`` SSE events, then drop the connection. Non-stream: drop it
    without answering."""
    return Behaviour(close_after=n_chunks)


def hang() -> Behaviour:
    """Never answer (until ``reset()``, ``down()`` or ``stop()`` closes the connection)."""
    return Behaviour(hang=True)


class RecordedRequest(NamedTuple):
    path: str
    headers: dict[str, str]
    """Lower-case header names."""
    body: Any
    """The parsed JSON body; None for a GET or a body that is not JSON."""
    time: float
    """``time.monotonic()`` when the request arrived."""


def _norm_path(path: str) -> str:
    """``chat/completions``, ``/chat/completions`` and ``/v1/chat/completions`` are one path."""
    path = "/" + path.lstrip("/")
    return path if path.startswith("/v1/") else "/v1" + path


def _rough_tokens(value: Any) -> int:
    """A rough prompt size: whitespace-separated words of every text in ``value``."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, Mapping):
        return sum(_rough_tokens(v) for k, v in value.items() if k in ("content", "text"))
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)  # a prompt given as token ids
        return sum(_rough_tokens(v) for v in value)
    return 0


def _embedding(text: str, dims: int) -> list[float]:
    """A unit vector that depends only on ``text`` and ``dims``."""
    digest = b""
    counter = 0
    while len(digest) < 4 * dims:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    raw = [((x / 0xFFFFFFFF) * 2.0 - 1.0) for x in struct.unpack(f"<{dims}I", digest[: 4 * dims])]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


class _Closed(Exception):
    """The handler dropped the connection on purpose."""


class FakeUpstream:
    """A fake OpenAI-compatible upstream on 127.0.0.1 (see the module's docstring)."""

    def __init__(
        self,
        name: str = "fake",
        *,
        reply_tokens: Iterable[str] | None = None,
        models: Iterable[str] = ("fake-model",),
        strict_models: bool = False,
        embedding_dims: int = 8,
        port: int = 0,
    ) -> None:
        """``models`` are listed by ``GET /v1/models``; with ``strict_models`` a request for
        another model gets a 404 ``model_not_found``, otherwise any model is answered (and
        echoed in the reply). ``port`` 0 picks a free one at the first ``start()``."""
        self.name = name
        self.reply_tokens: list[str] = (
            list(reply_tokens) if reply_tokens is not None else ["Hello", " from", f" {name}", "."]
        )
        self.models = list(models)
        self.strict_models = strict_models
        self.embedding_dims = embedding_dims
        self.host = "127.0.0.1"
        self.port = port
        self._lock = threading.Lock()
        self._default = Behaviour()
        self._queue: list[tuple[Behaviour, str | None]] = []
        self._requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._hangs: set[asyncio.Event] = set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (no ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client or a provider config takes: ``http://127.0.0.1:<port>/v1``."""
        return self.url + "/v1"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def start(self) -> FakeUpstream:
        """Start the loop thread and listen. Returns self."""
        if self._thread is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"fake-upstream-{self.name}", daemon=True
        )
        self._thread.start()
        self._call(self._setup())
        return self

    def stop(self) -> None:
        """Cut every connection, stop listening and end the loop thread. Idempotent."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._teardown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None
        self._thread = None

    def down(self) -> None:
        """Stop listening and cut every open connection (hanging requests included): new
        connections are refused until ``up()``."""
        self._call(self._close_listener())

    def up(self) -> None:
        """Listen again, on the same port."""
        self._call(self._listen())

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, coro: Any, timeout: float = 30.0) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("FakeUpstream is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    async def _setup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get(MODELS, self._models)
        app.router.add_post(CHAT, self._chat)
        app.router.add_post(COMPLETIONS, self._completions)
        app.router.add_post(EMBEDDINGS, self._embeddings)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # handler_cancellation: a cut connection (client gone, or down()) ends its handler, as
        # a real server stops generating; stop() then waits for no delayed or hanging reply.
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        server = self._runner.server if self._runner is not None else None
        if self._listener is not None or server is None:
            return
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(server, self.host, self.port, reuse_address=True)
        self.port = int(self._listener.sockets[0].getsockname()[1])

    async def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._release_hangs()
        if self._runner is not None and self._runner.server is not None:
            for handler in list(self._runner.server.connections):
                if handler.transport is not None:
                    handler.transport.abort()
        if listener is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.wait_closed(), 5)

    async def _teardown(self) -> None:
        await self._close_listener()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ behaviours

    @property
    def default(self) -> Behaviour:
        """What a request gets when no queued behaviour applies (``ok()`` at first)."""
        with self._lock:
            return self._default

    @default.setter
    def default(self, behaviour: Behaviour) -> None:
        with self._lock:
            self._default = behaviour

    def set_default(self, behaviour: Behaviour) -> None:
        self.default = behaviour

    def enqueue(self, *behaviours: Behaviour, path: str | None = None) -> None:
        """Queue behaviours for the next requests, one each, in order. With ``path`` only
        requests to that path take them (``GET /v1/models`` only takes entries that name it)."""
        key = None if path is None else _norm_path(path)
        with self._lock:
            self._queue.extend((b, key) for b in behaviours)

    @property
    def queued(self) -> int:
        """Behaviours still waiting in the queue."""
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        """Back to a fresh state: default ``ok()``, empty queue, no recorded requests, and
        requests left hanging by ``hang()`` released (their connections closed)."""
        with self._lock:
            self._default = Behaviour()
            self._queue.clear()
            self._requests.clear()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._release_hangs)

    def _release_hangs(self) -> None:
        for event in list(self._hangs):
            event.set()

    def _take(self, path: str, method: str) -> Behaviour:
        with self._lock:
            for i, (behaviour, key) in enumerate(self._queue):
                if key == path or (key is None and method == "POST"):
                    del self._queue[i]
                    return behaviour
            return self._default

    # ------------------------------------------------------------------ records

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def count(self, path: str | None = None) -> int:
        """Requests received, to ``path`` (``/v1/chat/completions`` or ``chat/completions``)
        or to any path."""
        key = None if path is None else _norm_path(path)
        with self._lock:
            return sum(1 for r in self._requests if key is None or r.path == key)

    def wait_for(self, n: int, path: str | None = None, timeout: float = 10.0) -> None:
        """Block until at least ``n`` requests (to ``path``) arrived; AssertionError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.count(path) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {self.count(path)} of {n} requests to {path}")
            time.sleep(0.01)

    async def _record(self, request: web.Request) -> RecordedRequest:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        record = RecordedRequest(
            request.path,
            {k.lower(): v for k, v in request.headers.items()},
            body,
            time.monotonic(),
        )
        with self._lock:
            self._requests.append(record)
        return record

    # ------------------------------------------------------------------ handlers

    async def _prelude(self, request: web.Request, behaviour: Behaviour) -> web.Response | None:
        """Delay, hang, drop or fail as ``behaviour`` says; None means go on and answer."""
        if behaviour.delay_s > 0:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.hang:
            event = asyncio.Event()
            self._hangs.add(event)
            try:
                await event.wait()
            finally:
                self._hangs.discard(event)
            self._drop(request)
        if behaviour.status != 200:
            headers = {"x-fake-upstream": self.name, **behaviour.headers}
            if behaviour.retry_after is not None:
                headers["Retry-After"] = f"{behaviour.retry_after:g}"
            body = behaviour.body or error_body(
                behaviour.status, f"HTTP {behaviour.status} (injected)", upstream=self.name
            )
            return web.json_response(dict(body), status=behaviour.status, headers=headers)
        return None

    def _drop(self, request: web.Request) -> NoReturn:
        """Close the connection once what was written is sent (no more: no response, or the
        rest of a stream), and end the handler."""
        if request.transport is not None:
            request.transport.close()
        raise _Closed

    async def _answer(self, request: web.Request, kind: str) -> web.StreamResponse:
        record = await self._record(request)
        behaviour = self._take(record.path, request.method)
        try:
            early = await self._prelude(request, behaviour)
            if early is not None:
                return early
            body = record.body if isinstance(record.body, dict) else None
            if body is None:
                return self._error(400, "the body must be a JSON object")
            model = body.get("model")
            if not isinstance(model, str) or not model:
                return self._error(400, "'model' is required")
            if self.strict_models and model not in self.models:
                return self._error(404, f"The model '{model}' does not exist")
            if kind == "embeddings":
                if behaviour.close_after is not None:
                    self._drop(request)
                return self._embedding_reply(body, model, behaviour)
            if body.get("stream"):
                return await self._stream(request, body, model, kind, behaviour)
            if behaviour.close_after is not None:
                self._drop(request)
            return await self._reply(body, model, kind, behaviour)
        except _Closed:
            # The connection is closing (after what was written so far): end the handler
            # without a response, as aiohttp does when a client disconnects.
            raise asyncio.CancelledError from None

    def _error(self, code: int, message: str) -> web.Response:
        return web.json_response(
            error_body(code, message, upstream=self.name),
            status=code,
            headers={"x-fake-upstream": self.name},
        )

    def _tokens(self, body: dict[str, Any], behaviour: Behaviour) -> tuple[list[str], str]:
        tokens = list(behaviour.tokens if behaviour.tokens is not None else self.reply_tokens)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(tokens):
            return tokens[:limit], "length"
        return tokens, "stop"

    def _usage(self, body: dict[str, Any], kind: str, completion: int) -> dict[str, int]:
        prompt = _rough_tokens(body.get("messages" if kind == "chat" else "prompt"))
        prompt = max(prompt, 1)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def _reply(
        self, body: dict[str, Any], model: str, kind: str, behaviour: Behaviour
    ) -> web.Response:
        tokens, finish = self._tokens(body, behaviour)
        if behaviour.chunk_delay_s > 0:
            await asyncio.sleep(behaviour.chunk_delay_s * len(tokens))
        text = "".join(tokens)
        n = next(self._ids)
        choice: dict[str, Any]
        if kind == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
            reply_id, obj = f"chatcmpl-{self.name}-{n}", "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            reply_id, obj = f"cmpl-{self.name}-{n}", "text_completion"
        return web.json_response(
            {
                "id": reply_id,
                "object": obj,
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": None,
                "choices": [choice],
                "usage": self._usage(body, kind, len(tokens)),
            },
            headers={"x-fake-upstream": self.name, **behaviour.headers},
        )

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        model: str,
        kind: str,
        behaviour: Behaviour,
    ) -> web.StreamResponse:
        tokens, finish = self._tokens(body, behaviour)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        n = next(self._ids)
        created = int(time.time())
        if kind == "chat":
            base = {
                "id": f"chatcmpl-{self.name}-{n}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
            }
        else:
            base = {
                "id": f"cmpl-{self.name}-{n}",
                "object": "text_completion",
                "created": created,
                "model": model,
            }

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            out = {**base, "choices": choices, **extra}
            if include_usage and "usage" not in out:
                out["usage"] = None
            return out

        def chat_choice(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

        def text_choice(text: str, reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}

        events: list[dict[str, Any]] = []
        if kind == "chat":
            events.append(chunk([chat_choice({"role": "assistant", "content": ""})]))
            events += [chunk([chat_choice({"content": t})]) for t in tokens]
            events.append(chunk([chat_choice({}, finish)]))
        else:
            events += [chunk([text_choice(t)]) for t in tokens]
            events.append(chunk([text_choice("", finish)]))
        if include_usage:
            events.append(chunk([], usage=self._usage(body, kind, len(tokens))))

        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "x-fake-upstream": self.name,
                **behaviour.headers,
            }
        )
        await resp.prepare(request)
        for i, event in enumerate(events):
            if behaviour.close_after is not None and i >= behaviour.close_after:
                self._drop(request)
            if i > 0 and behaviour.chunk_delay_s > 0:
                await asyncio.sleep(behaviour.chunk_delay_s)
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        if behaviour.close_after is not None and behaviour.close_after <= len(events):
            self._drop(request)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _embedding_reply(
        self, body: dict[str, Any], model: str, behaviour: Behaviour
    ) -> web.Response:
        inputs = body.get("input")
        if isinstance(inputs, str) or (
            isinstance(inputs, list) and inputs and all(isinstance(v, int) for v in inputs)
        ):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return self._error(400, "'input' must be a string or a non-empty list")
        dims = body.get("dimensions")
        dims = dims if isinstance(dims, int) and dims > 0 else self.embedding_dims
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, item in enumerate(inputs):
            vector = _embedding(json.dumps(item), dims)
            value: list[float] | str = vector
            if as_base64:
                value = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        prompt = max(sum(_rough_tokens(item) for item in inputs), 1)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            },
            headers={"x-fake-upstream": self.name, **behaviour.headers},
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "completions")

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, "embeddings")

    async def _models(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        behaviour = self._take(record.path, request.method)
        try:
            early = await self._prelude(request, behaviour)
            if early is not None:
                return early
            if behaviour.close_after is not None:
                self._drop(request)
        except _Closed:
            raise asyncio.CancelledError from None
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": self.name} for m in self.models
        ]
        return web.json_response(
            {"object": "list", "data": data}, headers={"x-fake-upstream": self.name}
        )

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return self._error(404, f"no route {request.method} {request.path}")
