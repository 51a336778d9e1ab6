"""Tracing: the SERVER span of each request, nested helper spans, W3C trace context passed on
to an upstream over real HTTP, OTLP/HTTP export, and nothing at all when tracing is off."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest
from fastapi import APIRouter, FastAPI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from helixflow.api.errors import install_error_handlers
from helixflow.api.middleware import RequestIdMiddleware
from helixflow.errors import InvalidRequestError, UpstreamError
from helixflow.observability.tracing import (
    ABANDONED,
    REQUEST_ID_ATTRIBUTE,
    RequestIdSpanMiddleware,
    Tracing,
    traces_endpoint,
)
from helixflow.observability_config import ObservabilityConfig
from helixflow.providers.openai_compat import OpenAICompatProvider
from helixflow.routing_config import ProviderConfig
from tests.fake_upstream import FakeUpstream

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SECRET = "sk-proj-" + "Q9z" * 10
TARGET = "acme/gpt-4o-mini"
CHAT_BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    tracing = Tracing.for_tests(exporter)
    yield tracing
    tracing.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def hex_span(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


def sampled(flags: str) -> bool:
    return bool(int(flags, 16) & 0x01)


def child_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.context is not None
    assert parent.context is not None
    return (
        child.parent is not None
        and child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )


# --- the SERVER span of a request ------------------------------------------------------------


def make_app(tracing: Tracing) -> FastAPI:
    app = FastAPI(telemetry=tracing.fastapi_telemetry())
    install_error_handlers(app)
    v1 = APIRouter(prefix="/v1")

    @v1.post("/items/{item_id}")
    async def item(item_id: int) -> dict[str, object]:
        with tracing.span("router.plan", {"helixflow.model": "m1"}):
            pass
        return {"id": item_id, "traceparent": tracing.inject_headers().get("traceparent")}

    @v1.get("/boom")
    async def boom() -> None:
        raise RuntimeError("handler failed")

    @v1.get("/refused")
    async def refused() -> None:
        raise InvalidRequestError("bad input")

    app.include_router(v1)
    if tracing.enabled:
        app.add_middleware(RequestIdSpanMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app


@pytest.fixture
async def client(tracing: Tracing) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(tracing), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def test_server_span_is_named_by_route_with_http_attributes(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    response = await client.post("/v1/items/7")
    assert response.status_code == 200
    spans = by_name(exporter)
    server = spans["POST /v1/items/{item_id}"]  # the included router's prefix too
    assert server.kind is SpanKind.SERVER
    assert server.parent is None
    assert server.attributes is not None
    assert {
        "http.request.method": "POST",
        "url.path": "/v1/items/7",
        "http.route": "/v1/items/{item_id}",
        "http.response.status_code": 200,
        REQUEST_ID_ATTRIBUTE: response.headers["x-request-id"],
    }.items() <= dict(server.attributes).items()
    assert server.status.status_code is StatusCode.UNSET
    assert child_of(spans["router.plan"], server)
    # The handler ran inside the server span: its outgoing context names that span.
    match = TRACEPARENT.match(response.json()["traceparent"])
    assert match is not None
    assert match.group(1, 2) == (hex_trace(server), hex_span(server))
    assert sampled(match.group(3))


async def test_incoming_traceparent_is_continued(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "acme=1"}
    response = await client.post("/v1/items/1", headers=headers)
    assert response.status_code == 200
    spans = by_name(exporter)
    server = spans["POST /v1/items/{item_id}"]
    assert hex_trace(server) == CALLER_TRACE
    assert server.parent is not None
    assert server.parent.is_remote
    assert format(server.parent.span_id, "016x") == CALLER_SPAN
    assert hex_trace(spans["router.plan"]) == CALLER_TRACE
    assert child_of(spans["router.plan"], server)


async def test_unsampled_caller_is_followed(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}
    response = await client.post("/v1/items/1", headers=headers)
    assert exporter.get_finished_spans() == ()
    # The context still flows on, unsampled, in the caller's trace.
    match = TRACEPARENT.match(response.json()["traceparent"])
    assert match is not None
    assert match.group(1) == CALLER_TRACE
    assert not sampled(match.group(3))


async def test_an_unknown_url_is_named_by_its_method_and_its_query_masked(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    response = await client.get(f"/no/such/path/42?api_key={SECRET}&limit=5")
    assert response.status_code == 404
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET"
    assert span.attributes is not None
    assert "http.route" not in span.attributes
    assert span.attributes["http.response.status_code"] == 404
    assert span.status.status_code is StatusCode.UNSET  # a client's mistake is no server error
    assert span.attributes["url.query"] == "api_key=***&limit=5"


async def test_a_failing_handler_marks_the_span_as_an_error(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    response = await client.get("/v1/boom")
    assert response.status_code == 500
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /v1/boom"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "RuntimeError"


async def test_a_4xx_answer_is_not_an_error(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    assert (await client.get("/v1/refused")).status_code == 400
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET


# --- the helpers: nesting, errors, streams ---------------------------------------------------


async def test_attempt_spans_nest_under_the_request_with_errors_recorded(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async def attempt(target: str, fail: bool) -> str:
        with tracing.span(
            "provider.request",
            {"helixflow.target": target, "helixflow.provider": target.split("/")[0]},
            kind=SpanKind.CLIENT,
        ) as span:
            await asyncio.sleep(0)
            if fail:
                raise UpstreamError(
                    f"{target} answered HTTP 503", target=target, upstream_status=503
                )
            span.set_attribute("http.response.status_code", 200)
            return target

    with tracing.span("request", kind=SpanKind.SERVER):
        with tracing.span("router.plan", {"helixflow.model": "gpt"}) as plan:
            assert plan.recording
            plan.set_attributes({"helixflow.strategy": "ordered"})
        for target, fail in (("up1/m", True), ("up1/m", True), ("up2/m", False)):
            try:
                await attempt(target, fail)
            except UpstreamError:
                continue

    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["router.plan", *["provider.request"] * 3, "request"]
    request = spans[-1]
    assert all(child_of(span, request) for span in spans[:-1])
    first, retry, fallback = spans[1:4]
    for failed in (first, retry):
        assert failed.status.status_code is StatusCode.ERROR
        assert failed.status.description == "up1/m answered HTTP 503"
        assert failed.attributes is not None
        assert failed.attributes["http.response.status_code"] == 503
        assert failed.attributes["error.type"] == "upstream_error"
        assert failed.kind is SpanKind.CLIENT
    assert fallback.status.status_code is StatusCode.UNSET
    assert fallback.attributes is not None
    assert fallback.attributes["helixflow.provider"] == "up2"
    assert fallback.attributes["http.response.status_code"] == 200
    assert spans[0].attributes is not None
    assert spans[0].attributes["helixflow.strategy"] == "ordered"


def test_secrets_are_masked_in_recorded_errors(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with (
        pytest.raises(UpstreamError),
        tracing.span("provider.request"),
    ):
        raise UpstreamError(f"acme refused: Incorrect API key provided: {SECRET}", target="acme/m")
    (span,) = exporter.get_finished_spans()
    assert span.status.description == "acme refused: Incorrect API key provided: sk-***"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "helixflow.errors.UpstreamError"
    assert event.attributes["exception.message"] == span.status.description
    stacktrace = event.attributes["exception.stacktrace"]
    assert isinstance(stacktrace, str)
    assert "Traceback" in stacktrace
    assert "sk-***" in stacktrace
    assert SECRET not in stacktrace


async def tokens(n: int, fail_at: int | None = None) -> AsyncIterator[bytes]:
    for i in range(n):
        if i == fail_at:
            raise UpstreamError("cut", target="t", code="upstream_stream_closed")
        yield b"data: x\n\n"


async def test_a_followed_stream_keeps_its_span_open_to_the_end(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.span("engine.generate") as span:
        chunks = span.follow(tokens(3))
    assert exporter.get_finished_spans() == ()  # still open: the stream has not been read
    assert [chunk async for chunk in chunks] == [b"data: x\n\n"] * 3
    (done,) = exporter.get_finished_spans()
    assert done.name == "engine.generate"
    assert done.status.status_code is StatusCode.UNSET
    assert done.attributes is not None
    assert ABANDONED not in done.attributes


async def test_a_followed_stream_reports_its_in_band_error(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.span("provider.request") as span:
        chunks = span.follow(tokens(2), failed=lambda: "upstream_error")
    async for _ in chunks:
        pass
    (done,) = exporter.get_finished_spans()
    assert done.status.status_code is StatusCode.ERROR
    assert done.attributes is not None
    assert done.attributes["error.type"] == "upstream_error"


async def test_a_stream_that_raises_or_is_closed_early(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.span("raised") as span:
        raising = span.follow(tokens(3, fail_at=1))
    with pytest.raises(UpstreamError):
        async for _ in raising:
            pass
    with tracing.span("closed") as span:
        closed = span.follow(tokens(3))
    assert await anext(closed) == b"data: x\n\n"
    await closed.aclose()  # type: ignore[attr-defined]
    spans = by_name(exporter)
    assert spans["raised"].status.status_code is StatusCode.ERROR
    assert spans["raised"].attributes is not None
    assert spans["raised"].attributes["error.type"] == "upstream_stream_closed"
    assert spans["closed"].status.status_code is StatusCode.UNSET
    assert spans["closed"].attributes is not None
    assert spans["closed"].attributes[ABANDONED] is True
    assert len(exporter.get_finished_spans()) == 2  # each ended exactly once


async def test_a_cancelled_attempt_is_abandoned_not_failed(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async def attempt() -> None:
        with tracing.span("provider.request"):
            await asyncio.Event().wait()

    task = asyncio.ensure_future(attempt())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes[ABANDONED] is True


def test_inject_headers_names_the_current_span(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    assert tracing.inject_headers() == {}  # no current span
    with tracing.span("outer"), tracing.span("provider.request") as span:
        headers = tracing.inject_headers()
        context = span.span.get_span_context()
    match = TRACEPARENT.match(headers["traceparent"])
    assert match is not None
    assert match.group(1, 2) == (format(context.trace_id, "032x"), format(context.span_id, "016x"))
    assert sampled(match.group(3))
    assert int(match.group(3), 16) == int(context.trace_flags)
    assert tracing.inject_headers() == {}  # the spans are no longer current
    assert len(exporter.get_finished_spans()) == 2


def test_a_zero_sample_ratio_records_nothing_but_still_propagates() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.for_tests(exporter, sample_ratio=0.0)
    with tracing.span("request") as span:
        assert not span.recording
        headers = tracing.inject_headers()
    tracing.shutdown()
    assert exporter.get_finished_spans() == ()
    match = TRACEPARENT.match(headers["traceparent"])
    assert match is not None
    assert not sampled(match.group(3))


# --- W3C trace context reaches a real upstream -----------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream("acme", models=("gpt-4o-mini",)) as upstream:
        yield upstream


@pytest.fixture
async def provider(fake: FakeUpstream) -> AsyncIterator[OpenAICompatProvider]:
    fake.reset()
    config = ProviderConfig(name="acme", base_url=fake.base_url, models=["gpt-4o-mini"])
    p = OpenAICompatProvider(config, "sk-acme-123")
    await p.start()
    yield p
    await p.stop()


async def test_the_upstream_receives_the_provider_spans_traceparent(
    tracing: Tracing,
    exporter: InMemorySpanExporter,
    provider: OpenAICompatProvider,
    fake: FakeUpstream,
) -> None:
    with tracing.span("request", kind=SpanKind.SERVER):
        with tracing.span("provider.request", kind=SpanKind.CLIENT):
            await provider.post(
                TARGET, "chat/completions", CHAT_BODY, headers=tracing.inject_headers()
            )
        with tracing.span("provider.request", kind=SpanKind.CLIENT):
            stream = await provider.stream(
                TARGET,
                "chat/completions",
                orjson.dumps({**orjson.loads(CHAT_BODY), "stream": True}),
                headers=tracing.inject_headers(),
            )
            try:
                events = [event async for event in stream.events()]
            finally:
                stream.close()
    assert events[-1] == b"data: [DONE]\n\n"
    posted, streamed, request = exporter.get_finished_spans()
    received = [r.headers for r in fake.requests if r.path == "/v1/chat/completions"]
    assert len(received) == 2
    for headers, span in zip(received, (posted, streamed), strict=True):
        assert span.context is not None
        flags = f"{int(span.context.trace_flags):02x}"
        assert headers["traceparent"] == f"00-{hex_trace(span)}-{hex_span(span)}-{flags}"
        assert sampled(flags)
        assert headers["authorization"] == "Bearer sk-acme-123"  # the session's own headers stay
        assert child_of(span, request)


async def test_tracing_off_makes_no_spans_and_sends_no_headers(
    exporter: InMemorySpanExporter, provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    tracing = Tracing.from_config(ObservabilityConfig())
    assert not tracing.enabled
    assert tracing.tracer is None
    with tracing.span("provider.request", {"helixflow.target": TARGET}) as span:
        assert not span.recording
        assert span is tracing.span("another")  # one shared do-nothing scope
        headers = tracing.inject_headers()
        assert headers == {}
        await provider.post(TARGET, "chat/completions", CHAT_BODY, headers=headers)
        chunks = tokens(1)
        assert span.follow(chunks) is chunks
    (request,) = fake.requests
    assert "traceparent" not in request.headers
    assert "tracestate" not in request.headers

    assert tracing.fastapi_telemetry() == {
        "tracing": False,
        "metrics": False,
        "logs": False,
        "auto_configure": False,
    }
    app = make_app(tracing)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        reply = await client.post(
            "/v1/items/3", headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        )
    assert reply.json() == {"id": 3, "traceparent": None}
    assert exporter.get_finished_spans() == ()
    tracing.shutdown()


# --- configuration and OTLP/HTTP export ------------------------------------------------------


def test_otlp_endpoint_is_validated_and_completed() -> None:
    assert traces_endpoint("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_endpoint("http://collector:4318") == "http://collector:4318/v1/traces"
    custom = "https://otel.example/custom/traces"
    assert traces_endpoint(custom) == custom
    assert traces_endpoint("  ") is None
    assert traces_endpoint(None) is None
    with pytest.raises(ValueError, match="http"):
        traces_endpoint("collector:4318")
    with pytest.raises(ValueError, match="otlp_endpoint"):
        Tracing.from_config(ObservabilityConfig(tracing=True, otlp_endpoint="ftp://x/"))
    with pytest.raises(ValidationError):
        ObservabilityConfig(trace_sample_ratio=1.5)


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_spans_are_exported_over_otlp_http(
    collector: tuple[str, list[tuple[str, str, bytes]]],
) -> None:
    url, received = collector
    config = ObservabilityConfig(tracing=True, otlp_endpoint=url, service_name="helix-test")
    tracing = Tracing.from_config(config)
    with tracing.span("request", kind=SpanKind.SERVER), tracing.span("router.plan"):
        pass
    tracing.shutdown()  # flushes the batch
    tracing.shutdown()  # idempotent
    assert not tracing.enabled
    assert [(path, kind) for path, kind, _ in received] == [
        ("/v1/traces", "application/x-protobuf")
    ]
    export = ExportTraceServiceRequest()
    export.ParseFromString(received[0][2])
    (resource_spans,) = export.resource_spans
    attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert attributes["service.name"] == "helix-test"
    names = sorted(span.name for scope in resource_spans.scope_spans for span in scope.spans)
    assert names == ["request", "router.plan"]
