"""Recording every inference request: one ``RequestRecord`` per request, one event at its end.

``TelemetryMiddleware`` opens a record for the inference routes before anything else runs, so
even a request refused by validation is recorded; handlers fill in what they learn (model,
tokens, first-token time) and the middleware hands the finished event to the store when the
last byte has been sent, or the client has gone.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from helixflow.engine.base import Delta, GenerationStream
from helixflow.errors import HelixFlowError
from helixflow.observability.metrics import Metrics
from helixflow.router.catalogue import Target
from helixflow.store.schema import utcnow
from helixflow.store.telemetry.events import InferenceEvent, TelemetryEvent

RECORDED_ENDPOINTS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
"""Paths whose requests are recorded, and the endpoint name stored for each."""

LOCAL_PROVIDER = "local"
STATE_KEY = "telemetry_record"
_SAFE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_MAX_ERROR_BODY = 64 * 1024


class EventRecorder(Protocol):
    def record(self, event: TelemetryEvent) -> None: ...


@dataclass(slots=True)
class RequestRecord:
    """What is known about one request so far."""

    request_id: str
    endpoint: str
    created_at: datetime = field(default_factory=utcnow)
    started: float = field(default_factory=time.monotonic)
    client_request_id: str | None = None
    agent_id: str | None = None
    end_user: str | None = None
    requested_model: str | None = None
    served_model: str | None = None
    provider: str | None = None
    streamed: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    first_token_at: float | None = None
    finish_reason: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    cache_hit: bool = False
    api_key_id: str | None = None
    user_id: str | None = None
    target: Target | None = None
    """The target that served it, for its prices."""

    def serving(
        self, *, served_model: str, prompt_tokens: int, provider: str | None = LOCAL_PROVIDER
    ) -> None:
        self.served_model = served_model
        self.provider = provider
        self.prompt_tokens = prompt_tokens

    def retry(self) -> None:
        """A new attempt (on another target, or the same one again) starts from scratch."""
        self.error_type = self.error_code = None
        self.first_token_at = None
        self.finish_reason = None
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0

    def fail(self, exc: HelixFlowError) -> None:
        self.error_type = exc.error_type
        self.error_code = exc.code

    def watch(self, stream: GenerationStream) -> GenerationStream:
        """``stream``, noting the first token's time, the usage and any error as they pass."""
        return _WatchedStream(stream, self)

    def _observe(self, delta: Delta) -> None:
        if self.first_token_at is None and (delta.text or delta.logprobs):
            self.first_token_at = time.monotonic()
        if delta.finish_reason is not None:
            self.completion_tokens += delta.completion_tokens
            if delta.index == 0:  # every choice of one prompt reports the same reused prefix
                self.cached_tokens += delta.cached_tokens
            self.finish_reason = delta.finish_reason

    def event(self, http_status: int, *, completed: bool) -> InferenceEvent:
        """The final event; ``completed``: the whole response reached the client."""
        if self.error_type is not None or http_status >= 400:
            status = "cancelled" if http_status == 499 else "error"
        else:
            status = "success" if completed else "cancelled"
        ttft = None
        if self.first_token_at is not None:
            ttft = round((self.first_token_at - self.started) * 1000, 3)
        return InferenceEvent(
            request_id=self.request_id,
            created_at=self.created_at,
            endpoint=self.endpoint,
            status=status,
            http_status=http_status,
            latency_ms=round((time.monotonic() - self.started) * 1000, 3),
            client_request_id=self.client_request_id,
            api_key_id=self.api_key_id,
            user_id=self.user_id,
            agent_id=self.agent_id,
            end_user=self.end_user,
            requested_model=self.requested_model,
            served_model=self.served_model,
            provider=self.provider,
            error_type=self.error_type,
            error_code=self.error_code,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            ttft_ms=ttft,
            streamed=self.streamed,
            cache_hit=self.cache_hit,
            cost_usd=self.cost_usd,
        )

    @property
    def cost_usd(self) -> float:
        """What the request cost at its target's prices (a cache hit costs nothing)."""
        if self.target is None or self.cache_hit:
            return 0.0
        return round(self.target.cost(self.prompt_tokens, self.completion_tokens), 10)


class _WatchedStream:
    def __init__(self, inner: GenerationStream, record: RequestRecord) -> None:
        self._inner = inner
        self._record = record

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self

    async def __anext__(self) -> Delta:
        try:
            delta = await self._inner.__anext__()
        except HelixFlowError as exc:
            self._record.fail(exc)
            raise
        self._record._observe(delta)
        return delta

    async def aclose(self) -> None:
        await self._inner.aclose()

    def cancel(self) -> None:
        self._inner.cancel()


def request_record(
    request: Request, *, model: str, user: str | None, streamed: bool
) -> RequestRecord | None:
    """The record of this request (None when telemetry is off), noting what it asks for."""
    record = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(record, RequestRecord):
        return None
    record.requested_model = model
    record.end_user = user
    record.streamed = streamed
    return record


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            text = value.decode("latin-1").strip()
            return text if _SAFE_ID.match(text) else None
    return None


class TelemetryMiddleware:
    """Opens a record for each inference request and records its event when it ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            RECORDED_ENDPOINTS.get(scope.get("path", "")) if scope["type"] == "http" else None
        )
        recorder: EventRecorder | None = getattr(scope["app"].state, "recorder", None)
        metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
        if endpoint is None or recorder is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        record = RequestRecord(
            request_id=state["request_id"],
            endpoint=endpoint,
            client_request_id=_header(scope, b"x-client-request-id")
            or _header(scope, b"x-request-id"),
            agent_id=_header(scope, b"x-agent-id"),
        )
        state[STATE_KEY] = record
        http_status = 500
        completed = False
        error_body: list[bytes] = []

        async def watching_send(message: Message) -> None:
            nonlocal http_status, completed
            if message["type"] == "http.response.start":
                http_status = message["status"]
            elif message["type"] == "http.response.body":
                if http_status >= 400 and sum(map(len, error_body)) < _MAX_ERROR_BODY:
                    error_body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    completed = True
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            if error_body and record.error_type is None:
                _note_error(record, b"".join(error_body))
            event = record.event(http_status, completed=completed)
            recorder.record(event)
            if metrics is not None:
                metrics.observe_request(event, record.target)


def _note_error(record: RequestRecord, body: bytes) -> None:
    """Take the error's type and code from the OpenAI envelope the handlers rendered."""
    try:
        error: Any = orjson.loads(body).get("error", {})
    except (orjson.JSONDecodeError, AttributeError):
        return
    if isinstance(error, dict):
        record.error_type = str(error.get("type") or "") or None
        record.error_code = str(error.get("code") or "") or None
