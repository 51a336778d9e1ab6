"""Attempts on an upstream target: the client's body passed through, the reply relayed.

The body is the client's own JSON with ``model`` set to the upstream's name (fields this
server does not know still reach the provider). A stream is committed once its first token is
in hand: a provider that fails before that is retried or replaced, one that fails after it
ends the client's stream with an error event. Usage comes from the provider (``include_usage``
is always asked for; the usage chunk is dropped again unless the client asked too), else it is
counted.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from helixflow.api.openai.results import JsonResult, StreamResult
from helixflow.api.openai.sse import DONE, error_event
from helixflow.api.telemetry import RequestRecord
from helixflow.errors import UpstreamError
from helixflow.providers.openai_compat import OpenAICompatProvider, UpstreamStream
from helixflow.router.catalogue import Target


def upstream_body(raw: dict[str, Any], target: Target, *, stream: bool) -> bytes:
    body = dict(raw)
    body["model"] = target.upstream_model
    if stream:
        options = body.get("stream_options")
        body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    return orjson.dumps(body)


def _note_usage(record: RequestRecord, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    record.completion_tokens = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        record.cached_tokens = int(details.get("cached_tokens") or 0)


def _payload(event: bytes) -> Any:
    data = event[6:] if event.startswith(b"data: ") else event[5:]
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _carries_output(payload: Any) -> bool:
    """Whether a chunk carries a token, a call or the end of a choice."""
    if not isinstance(payload, dict):
        return False
    for choice in payload.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
            return True
        if choice.get("text") or choice.get("finish_reason"):
            return True
    return False


@dataclass(slots=True)
class _Relay:
    """Passes one upstream stream through, noting usage and finish reasons on the way."""

    stream: UpstreamStream
    events: AsyncIterator[bytes]
    buffered: list[bytes]
    record: RequestRecord
    client_usage: bool
    counted: int = 0
    usage_seen: bool = False

    def _filter(self, event: bytes) -> bytes | None:
        if b'"usage"' in event and b'"usage":null' not in event:
            payload = _payload(event)
            if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
                _note_usage(self.record, payload["usage"])
                self.usage_seen = True
                if not payload.get("choices") and not self.client_usage:
                    return None
        if b'"finish_reason":"' in event or b'"finish_reason": "' in event:
            payload = _payload(event)
            for choice in (payload or {}).get("choices") or ():
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    self.record.finish_reason = str(choice["finish_reason"])
        elif b'"content":"' in event or b'"text":"' in event or b'"content": "' in event:
            self.counted += 1
        return event

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            for event in self.buffered:
                out = self._filter(event)
                if out is not None:
                    yield out
            async for event in self.events:
                out = self._filter(event)
                if out is not None:
                    yield out
        except UpstreamError as exc:
            self.record.fail(exc)
            yield error_event(exc)
        finally:
            self.stream.close()
            if not self.usage_seen:
                self.record.completion_tokens = self.counted


async def open_stream(
    provider: OpenAICompatProvider,
    target: Target,
    path: str,
    body: bytes,
    record: RequestRecord,
    *,
    client_usage: bool,
    headers: dict[str, str] | None = None,
) -> StreamResult:
    """Start the stream and read it up to its first token (or its end). ``headers``: extra
    request headers (the W3C trace context)."""
    stream = await provider.stream(target.id, path, body, headers)
    events = stream.events()
    buffered: list[bytes] = []
    try:
        async for event in events:
            buffered.append(event)
            if event.startswith(DONE.rstrip()) or _carries_output(_payload(event)):
                break
        else:
            raise UpstreamError(
                f"{target.id} closed the stream before any token",
                target=target.id,
                code="upstream_stream_closed",
            )
    except BaseException:
        stream.close()
        raise
    record.first_token_at = time.monotonic()
    relay = _Relay(stream, events, buffered, record, client_usage)
    return StreamResult(relay.chunks(), headers=stream.headers)


async def post_json(
    provider: OpenAICompatProvider,
    target: Target,
    path: str,
    body: bytes,
    record: RequestRecord,
    *,
    headers: dict[str, str] | None = None,
) -> JsonResult:
    reply = await provider.post(target.id, path, body, headers)
    _note_usage(record, reply.usage)
    return JsonResult(reply.body, headers=reply.headers)
