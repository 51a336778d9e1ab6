"""The request path of every inference endpoint: cache, route, attempt, relay, record.

``Gateway.serve`` answers a deterministic request from the response cache when it can, else
asks the router for a plan, runs it with the dispatcher (each attempt either on a local engine
through the endpoint's local runner, or on an upstream provider), relays the result, and
records the routing decision. Responses carry ``x-helixflow-target`` and
``x-helixflow-route-reason``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from opentelemetry.trace import SpanKind

from helixflow.api.auth import principal_of
from helixflow.api.openai.results import Result, StreamResult
from helixflow.api.openai.upstream import open_stream, post_json, upstream_body
from helixflow.api.streaming import SSE_HEADERS, until_disconnected
from helixflow.api.telemetry import STATE_KEY, EventRecorder, RequestRecord
from helixflow.errors import PermissionDeniedError
from helixflow.observability.metrics import Metrics
from helixflow.observability.tracing import SpanScope, Tracing
from helixflow.providers.openai_compat import OpenAICompatProvider
from helixflow.router.cache import CachedReply, ResponseCache, cache_key
from helixflow.router.cache_replay import replay_chunks
from helixflow.router.catalogue import Target
from helixflow.router.dispatch import Dispatcher, DispatchError, Lease
from helixflow.router.router import RequestNeeds, Router
from helixflow.security.limits import Admission, Limiter
from helixflow.store.telemetry.events import RoutingEvent

log = logging.getLogger(__name__)

LocalRunner = Callable[[Target, bool], Awaitable[Result]]
"""Runs the request on a local target: (target, renamed) -> result; ``renamed``: the request
named a group or another model, so the reply should name the target's model."""


@dataclass(frozen=True, slots=True)
class Call:
    """One request as the gateway sees it."""

    endpoint: str
    """Telemetry/cache name: chat.completions, completions, embeddings."""
    path: str
    """Path below the provider's base URL."""
    model: str
    raw: dict[str, Any]
    needs: RequestNeeds
    stream: bool = False
    include_usage: bool = False


async def raw_body(request: Request) -> dict[str, Any]:
    """The client's JSON body (already read and validated by FastAPI)."""
    data = orjson.loads(await request.body())
    return data if isinstance(data, dict) else {}


def record_of(request: Request) -> RequestRecord:
    """The telemetry record of this request, or a detached one when telemetry is off."""
    record = request.scope.get("state", {}).get(STATE_KEY)
    if isinstance(record, RequestRecord):
        return record
    return RequestRecord(
        request_id=str(request.scope.get("state", {}).get("request_id", "")), endpoint=""
    )


class Gateway:
    def __init__(
        self,
        router: Router,
        dispatcher: Dispatcher,
        providers: Mapping[str, OpenAICompatProvider],
        cache: ResponseCache | None,
        recorder: EventRecorder | None,
        limiter: Limiter | None = None,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._tracing = tracing if tracing is not None else Tracing.disabled()
        self.router = router
        self._dispatcher = dispatcher
        self._providers = providers
        self.cache = cache
        self._recorder = recorder

    async def serve(self, request: Request, call: Call, local: LocalRunner) -> Response:
        record = record_of(request)
        principal = principal_of(request)
        record.api_key_id, record.user_id = principal.key_id, principal.user_id
        if not principal.may_use(call.model):
            raise PermissionDeniedError(
                f"This API key may not use the model '{call.model}'.",
                param="model",
                code="model_not_allowed",
            )
        if self._limiter is None:
            return await self._serve(request, call, local, record, None)
        admission = await self._limiter.admit(principal, call.model, call.needs.prompt_tokens)
        try:
            response = await self._serve(request, call, local, record, admission)
        except BaseException:
            await admission.release()
            raise
        response.headers.update(admission.headers)
        return response

    async def _serve(
        self,
        request: Request,
        call: Call,
        local: LocalRunner,
        record: RequestRecord,
        admission: Admission | None,
    ) -> Response:
        key = self._cache_key(request, call)
        if key is not None and self.cache is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                response = self._from_cache(call, hit, record)
                if admission is not None:
                    await admission.settle(record.completion_tokens, 0.0)
                return response
        with self._tracing.span("router.plan") as span:
            plan = self.router.plan(call.model, call.needs)
            if span.recording:
                span.set_attributes(
                    {
                        "helixflow.model": call.model,
                        "helixflow.strategy": plan.strategy,
                        "helixflow.route.reason": plan.reason,
                        "helixflow.route.targets": [t.id for t in plan.order],
                    }
                )

        async def attempt(target: Target) -> Result:
            return await self._attempt(target, call, local, record)

        request_id = record.request_id
        try:
            if call.stream:  # Starlette cancels a stream when its client leaves
                lease, event = await self._dispatcher.run(plan, attempt, request_id=request_id)
            else:
                lease, event = await until_disconnected(
                    request, self._dispatcher.run(plan, attempt, request_id=request_id)
                )
        except DispatchError as failed:
            self._record(failed.event)
            raise failed.error from None
        self._record(event)
        result = lease.result
        headers = {**result.headers, **lease.headers}
        if isinstance(result, StreamResult):
            return StreamingResponse(
                self._relay(lease, result.chunks, record, admission),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **headers},
            )
        lease.finish(True, completion_tokens=record.completion_tokens)
        if admission is not None:
            await admission.settle(
                record.completion_tokens, record.cost_usd, prompt_tokens=record.prompt_tokens
            )
        if key is not None and self.cache is not None:
            await self.cache.put(key, CachedReply(result.body, lease.target.id, time.time()))
        return Response(result.body, media_type="application/json", headers=headers)

    async def _attempt(
        self, target: Target, call: Call, local: LocalRunner, record: RequestRecord
    ) -> Result:
        """One try on ``target``: its local engine, or its provider (with the trace context)."""
        record.retry()
        record.serving(served_model=target.model, prompt_tokens=0, provider=target.provider)
        record.target = target
        tracing = self._tracing
        if target.local:
            renamed = call.model not in (target.model, *target.aliases)
            with tracing.span("engine.generate") as span:
                if span.recording:
                    span.set_attributes(_target_attributes(target))
                return _followed(await local(target, renamed), span, record)
        with tracing.span("provider.request", kind=SpanKind.CLIENT) as span:
            if span.recording:
                span.set_attributes(_target_attributes(target))
            result = await self._upstream(target, call, record, tracing.inject_headers())
            span.set_attribute("http.response.status_code", 200)  # errors raise instead
            return _followed(result, span, record)

    async def _upstream(
        self, target: Target, call: Call, record: RequestRecord, headers: dict[str, str]
    ) -> Result:
        provider = self._providers[target.provider]
        body = upstream_body(call.raw, target, stream=call.stream)
        if call.stream:
            return await open_stream(
                provider,
                target,
                call.path,
                body,
                record,
                client_usage=call.include_usage,
                headers=headers,
            )
        return await post_json(provider, target, call.path, body, record, headers=headers)

    def _cache_key(self, request: Request, call: Call) -> str | None:
        if self.cache is None or call.endpoint == "embeddings":
            return None
        control = request.headers.get("cache-control", "").lower()
        if "no-cache" in control or "no-store" in control:
            return None
        return cache_key(call.endpoint, call.raw)

    def _from_cache(self, call: Call, hit: CachedReply, record: RequestRecord) -> Response:
        record.cache_hit = True
        target = self.router.catalogue.target(hit.target)
        record.serving(
            served_model=target.model if target else hit.target,
            prompt_tokens=0,
            provider=target.provider if target else None,
        )
        reply = orjson.loads(hit.body)
        usage = reply.get("usage") if isinstance(reply, dict) else None
        if isinstance(usage, dict):
            record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            record.completion_tokens = int(usage.get("completion_tokens") or 0)
        headers = {
            "x-helixflow-target": hit.target,
            "x-helixflow-route-reason": "response cache hit",
            "x-helixflow-cache": "hit",
        }
        if call.stream:
            chunks = replay_chunks(reply, include_usage=call.include_usage)
            record.first_token_at = time.monotonic()

            async def replay() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    yield chunk

            return StreamingResponse(
                replay(), media_type="text/event-stream", headers={**SSE_HEADERS, **headers}
            )
        record.first_token_at = time.monotonic()
        return Response(hit.body, media_type="application/json", headers=headers)

    async def _relay(
        self,
        lease: Lease[Result],
        chunks: AsyncIterator[bytes],
        record: RequestRecord,
        admission: Admission | None,
    ) -> AsyncIterator[bytes]:
        """Pass the stream on; close the lease with how it went."""
        finished = False
        try:
            async for chunk in chunks:
                yield chunk
            finished = True
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            if finished:
                ttft = (
                    (record.first_token_at - record.started) * 1000
                    if record.first_token_at is not None
                    else None
                )
                lease.finish(
                    record.error_type is None,
                    ttft_ms=ttft,
                    completion_tokens=record.completion_tokens,
                    error=record.error_code,
                )
            else:
                lease.abandon()
            if admission is not None:
                with contextlib.suppress(Exception):  # never fail a stream's close
                    await admission.settle(
                        record.completion_tokens,
                        record.cost_usd,
                        prompt_tokens=record.prompt_tokens,
                    )

    def _record(self, event: RoutingEvent) -> None:
        if self._recorder is not None:
            self._recorder.record(event)
        if self._metrics is not None:
            self._metrics.observe_decision(event)


def _target_attributes(target: Target) -> dict[str, str]:
    return {
        "helixflow.target": target.id,
        "helixflow.provider": target.provider,
        "gen_ai.request.model": target.upstream_model,
    }


def _followed(result: Result, span: SpanScope, record: RequestRecord) -> Result:
    """A stream keeps its attempt's span open until it ends (ERROR if it ended on an error)."""
    if isinstance(result, StreamResult):
        result.chunks = span.follow(result.chunks, failed=lambda: record.error_type)
    return result
