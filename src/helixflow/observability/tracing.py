"""OpenTelemetry tracing: one SERVER span per HTTP request, with router, engine and provider
children, and W3C trace context (``traceparent``/``tracestate``) passed to upstream providers.

One :class:`Tracing` per app, built from ``settings.observability`` (never the global tracer
provider, so two apps in one process keep their spans apart). The request path uses:

- FastAPI's own request telemetry for the SERVER span (:meth:`Tracing.fastapi_telemetry`,
  given to ``FastAPI(telemetry=...)``): it names the span by route template, prefixes of
  included routers and mounts too, and continues an incoming ``traceparent``;
  :class:`RequestIdSpanMiddleware` adds the request id to it;
- :meth:`Tracing.span`, a context manager for a child span (``router.plan``,
  ``engine.generate``, ``provider.request``): the span is current inside the block, an
  exception leaving it is recorded with status ERROR, and :meth:`SpanScope.follow` keeps it
  open until a streamed reply ends;
- :meth:`Tracing.inject_headers`, the W3C headers of the current span for an upstream call.

Secrets are masked (``redaction.redact``) in recorded exceptions, statuses and the URL query.

Tracing is off by default, and then costs next to nothing: :meth:`Tracing.span` hands out one
shared do-nothing scope, :meth:`Tracing.inject_headers` an empty dict, FastAPI's telemetry is
switched off and the middleware is not installed.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator, Callable, Mapping
from contextvars import Token
from types import TracebackType
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from starlette.types import ASGIApp, Receive, Scope, Send

from helixflow import __version__
from helixflow.errors import HelixFlowError, UpstreamError
from helixflow.observability.redaction import redact
from helixflow.observability_config import ObservabilityConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
Attributes = Mapping[str, AttributeValue]

INSTRUMENTATION_NAME = "helixflow"
OTLP_TRACES_PATH = "/v1/traces"
REQUEST_ID_ATTRIBUTE = "helixflow.request_id"
_REDACTED_ATTRIBUTES = ("url.query", "url.full")
ABANDONED = "helixflow.abandoned"
"""Attribute set on a span whose work was cancelled (the client left): not an error."""


def _end_with(span: trace.Span, exc: BaseException | None) -> None:
    """Record how the span's work ended (an exception: ERROR, a cancellation: abandoned),
    then end it."""
    if exc is not None:
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            span.set_attribute(ABANDONED, True)
        else:
            span.record_exception(
                exc,
                attributes={
                    "exception.message": redact(str(exc)),
                    "exception.stacktrace": redact("".join(traceback.format_exception(exc))),
                },
            )
            span.set_status(Status(StatusCode.ERROR, redact(_describe(exc))))
            span.set_attribute("error.type", _error_type(exc))
            if isinstance(exc, UpstreamError) and exc.upstream_status is not None:
                span.set_attribute("http.response.status_code", exc.upstream_status)
    span.end()


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, HelixFlowError) else f"{type(exc).__name__}: {exc}"


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, HelixFlowError) and exc.code:
        return exc.code
    return type(exc).__qualname__


class SpanScope:
    """A span made current for a ``with`` block. This base class is the do-nothing scope that
    disabled tracing hands out (one shared instance); live spans are a subclass."""

    __slots__ = ()

    def __enter__(self) -> SpanScope:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    @property
    def recording(self) -> bool:
        """Whether attributes set now are kept (guard costly ones with it)."""
        return False

    @property
    def span(self) -> trace.Span:
        """The OpenTelemetry span (an invalid, non-recording one when tracing is off)."""
        return trace.INVALID_SPAN

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def set_attributes(self, attributes: Attributes) -> None:
        return None

    def follow(
        self, chunks: AsyncIterator[T], failed: Callable[[], str | None] | None = None
    ) -> AsyncIterator[T]:
        """``chunks``, with the span kept open until they end (a streamed reply). The span
        then ends with status ERROR if ``failed()`` names an error (one the stream reported
        in-band), and as abandoned when the stream is closed before its end."""
        return chunks


_NO_SPAN = SpanScope()


class _LiveSpan(SpanScope):
    __slots__ = ("_attributes", "_close_stream", "_kind", "_name", "_span", "_token", "_tracer")

    def __init__(
        self, tracer: Tracer, name: str, attributes: Attributes | None, kind: SpanKind
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._attributes = attributes
        self._kind = kind
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: Token[Context] | None = None
        self._close_stream: Callable[[BaseException], None] | None = None

    def __enter__(self) -> SpanScope:
        self._span = self._tracer.start_span(
            self._name, kind=self._kind, attributes=self._attributes
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        if self._close_stream is None:
            _end_with(self._span, exc)
        elif exc is not None:  # the stream will never be passed on: end the span here
            self._close_stream(exc)

    @property
    def recording(self) -> bool:
        return self._span.is_recording()

    @property
    def span(self) -> trace.Span:
        return self._span

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def set_attributes(self, attributes: Attributes) -> None:
        self._span.set_attributes(attributes)

    def follow(
        self, chunks: AsyncIterator[T], failed: Callable[[], str | None] | None = None
    ) -> AsyncIterator[T]:
        stream = _FollowedStream(chunks, self._span, failed)
        self._close_stream = stream.close_span
        return stream


class _FollowedStream(Generic[T]):
    """Passes a stream on and ends its span when the stream ends, fails or is closed."""

    __slots__ = ("_chunks", "_failed", "_open", "_span")

    def __init__(
        self,
        chunks: AsyncIterator[T],
        span: trace.Span,
        failed: Callable[[], str | None] | None,
    ) -> None:
        self._chunks = chunks
        self._span = span
        self._failed = failed
        self._open = True

    def __aiter__(self) -> _FollowedStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            self._finish(None, ended=True)
            raise
        except BaseException as exc:
            self._finish(exc, ended=True)
            raise

    def close_span(self, exc: BaseException) -> None:
        self._finish(exc, ended=True)

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._finish(None, ended=False)

    def _finish(self, exc: BaseException | None, *, ended: bool) -> None:
        if not self._open:
            return
        self._open = False
        if exc is None and ended and self._failed is not None:
            error = self._failed()
            if error is not None:
                self._span.set_status(Status(StatusCode.ERROR, error))
                self._span.set_attribute("error.type", error)
        elif exc is None and not ended:
            self._span.set_attribute(ABANDONED, True)
        _end_with(self._span, exc)


class Tracing:
    """The tracer of one app (or none: tracing off). Build it with :meth:`from_config`,
    :meth:`disabled` or :meth:`for_tests`; :meth:`shutdown` flushes and stops the exporter."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self._provider = provider
        self._tracer: Tracer | None = (
            provider.get_tracer(INSTRUMENTATION_NAME, __version__) if provider else None
        )
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def disabled(cls) -> Tracing:
        return cls(None)

    @classmethod
    def from_config(cls, config: ObservabilityConfig) -> Tracing:
        """Off unless ``config.tracing``; spans go to ``config.otlp_endpoint`` (OTLP/HTTP, in
        batches on a background thread) when one is set."""
        if not config.tracing:
            return cls.disabled()
        provider = _provider(config.service_name, config.trace_sample_ratio)
        endpoint = traces_endpoint(config.otlp_endpoint)
        if endpoint is not None:
            exporter = OTLPSpanExporter(endpoint=endpoint)
            provider.add_span_processor(BatchSpanProcessor(exporter))
            log.info("tracing on: spans exported to %s", endpoint)
        else:
            log.info("tracing on: no otlp_endpoint, spans are not exported")
        return cls(provider)

    @classmethod
    def for_tests(cls, exporter: SpanExporter, *, sample_ratio: float = 1.0) -> Tracing:
        """Every ended span handed to ``exporter`` at once (e.g. an ``InMemorySpanExporter``)."""
        provider = _provider("helixflow-test", sample_ratio)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @property
    def tracer(self) -> Tracer | None:
        return self._tracer

    def span(
        self,
        name: str,
        attributes: Attributes | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> SpanScope:
        """A child of the current span, current itself inside the ``with`` block."""
        if self._tracer is None:
            return _NO_SPAN
        return _LiveSpan(self._tracer, name, attributes, kind)

    def inject_headers(self) -> dict[str, str]:
        """``traceparent`` (and ``tracestate`` when there is one) of the current span, for an
        outgoing request; empty when tracing is off or no span is current."""
        carrier: dict[str, str] = {}
        if self._tracer is not None:
            self._propagator.inject(carrier)
        return carrier

    def fastapi_telemetry(self) -> TelemetryConfig:
        """``FastAPI(telemetry=...)`` for this app. Tracing on: FastAPI makes each request's
        SERVER span on this app's provider (named by route template, ``"POST
        /v1/chat/completions"``, an incoming ``traceparent`` continued, ERROR on an
        exception or a 5xx), and nothing else (no metrics, logs or per-operation spans; never
        the global providers). Tracing off: all of it off, which also spares every request
        FastAPI's look-up of the global providers (~3 us)."""
        if self._provider is None:
            return {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
        return {
            "tracer_provider": self._provider,
            "tracing": True,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        }

    def shutdown(self) -> None:
        """Export what is pending and stop; idempotent."""
        if self._provider is not None:
            provider, self._provider = self._provider, None
            self._tracer = None
            provider.shutdown()


def traces_endpoint(url: str | None) -> str | None:
    """The OTLP/HTTP traces URL for a configured endpoint: a URL without a path gets
    ``/v1/traces`` (as the standard OTEL_EXPORTER_OTLP_ENDPOINT does); None for none.
    Raises ValueError for anything but an http(s) URL."""
    if url is None or not url.strip():
        return None
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"observability.otlp_endpoint must be an http(s) URL, not {url!r}")
    if parts.path in ("", "/"):
        return url.rstrip("/") + OTLP_TRACES_PATH
    return url


def _provider(service_name: str, sample_ratio: float) -> TracerProvider:
    resource = Resource.create({"service.name": service_name, "service.version": __version__})
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        resource=resource,
        shutdown_on_exit=False,  # the app's lifespan shuts it down; no atexit hook per app
    )
    provider.add_span_processor(_RedactingProcessor())  # first: before any exporter sees it
    return provider


class RequestIdSpanMiddleware:
    """Names the request id (``helixflow.request_id``) on the request's SERVER span, the one
    FastAPI opened (see :meth:`Tracing.fastapi_telemetry`). Install it inside
    ``RequestIdMiddleware``, and only when tracing is on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            state = scope.get("state")
            request_id = state.get("request_id") if isinstance(state, dict) else None
            if isinstance(request_id, str):
                trace.get_current_span().set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
        await self.app(scope, receive, send)


class _RedactingProcessor(SpanProcessor):
    """Masks secrets in the attributes a span starts with that may hold them (FastAPI
    records ``url.query`` verbatim: a client may well send ``?api_key=...``)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        attributes = span.attributes or {}
        for key in _REDACTED_ATTRIBUTES:
            value = attributes.get(key)
            if isinstance(value, str):
                masked = redact(value)
                if masked != value:
                    span.set_attribute(key, masked)
