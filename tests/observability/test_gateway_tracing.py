"""Tracing through the real app: a request's spans across the router, the engine and an
upstream (retried), the upstream receiving the attempt's traceparent, and JSON log lines
carrying the request and trace ids."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from helixflow.app import create_app
from helixflow.config import Settings
from helixflow.observability.json_logs import json_handler
from helixflow.observability.redaction import install_redaction
from helixflow.observability.tracing import Tracing
from helixflow.routing_config import ProviderConfig
from tests.fake_upstream import FakeUpstream, status

UPSTREAM = "acme/gpt-4o-mini"
LOCAL = "smollm2-135m"
CHAT = "POST /v1/chat/completions"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    handler, level = json_handler(out), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    install_redaction(root)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream("acme", models=("gpt-4o-mini",)) as upstream:
        yield upstream


@pytest.fixture
async def client(
    tmp_path: Path, fake: FakeUpstream, exporter: InMemorySpanExporter
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=tmp_path,
        providers=[
            ProviderConfig(name="acme", base_url=fake.base_url, models=["gpt-4o-mini"], probe=False)
        ],
        security={"auth": "off"},
        router={"retry": {"attempts": 2, "backoff_s": 0.01}},
    )
    app = create_app(settings, tracing=Tracing.for_tests(exporter))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hf") as c:
            yield c


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_retried_upstream_request(
    client: httpx.AsyncClient,
    fake: FakeUpstream,
    exporter: InMemorySpanExporter,
    json_lines: io.StringIO,
) -> None:
    fake.enqueue(status(503))
    response = await client.post("/v1/chat/completions", json=chat(UPSTREAM))
    assert response.status_code == 200, response.text
    plan, failed, served, server = exporter.get_finished_spans()
    assert [s.name for s in (plan, failed, served, server)] == [
        "router.plan",
        "provider.request",
        "provider.request",
        CHAT,
    ]
    assert server.kind is SpanKind.SERVER
    assert server.attributes is not None
    assert server.attributes["helixflow.request_id"] == response.headers["x-request-id"]
    assert server.attributes["http.route"] == "/v1/chat/completions"
    assert server.context is not None
    for child in (plan, failed, served):
        assert parent_id(child) == server.context.span_id
    assert plan.attributes is not None
    assert plan.attributes["helixflow.route.targets"] == (UPSTREAM,)
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["http.response.status_code"] == 503
    assert served.kind is SpanKind.CLIENT
    assert served.status.status_code is StatusCode.UNSET
    assert served.attributes is not None
    assert served.attributes["helixflow.target"] == UPSTREAM
    # Each attempt's own span reached the upstream as its parent.
    received = [r.headers["traceparent"] for r in fake.requests if r.path.endswith("/completions")]
    assert [line.split("-")[1:3] for line in received] == [
        list(ids(failed)),
        list(ids(served)),
    ]
    # The dispatcher's log line about the failed attempt names the request and its trace.
    lines = [orjson.loads(line) for line in json_lines.getvalue().splitlines()]
    (attempt,) = [line for line in lines if line["message"].startswith("attempt on")]
    assert attempt["request_id"] == response.headers["x-request-id"]
    assert attempt["trace_id"] == ids(server)[0]


async def test_an_upstream_stream_keeps_its_span_to_the_end(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    response = await client.post("/v1/chat/completions", json=chat(UPSTREAM, stream=True))
    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
    plan, attempt, server = exporter.get_finished_spans()
    assert (plan.name, attempt.name, server.name) == ("router.plan", "provider.request", CHAT)
    assert attempt.attributes is not None
    assert "helixflow.abandoned" not in attempt.attributes
    assert attempt.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("stream", [False, True])
async def test_a_local_generation(
    client: httpx.AsyncClient, exporter: InMemorySpanExporter, stream: bool
) -> None:
    body = chat(LOCAL, max_tokens=4, stream=stream)
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    plan, generate, server = exporter.get_finished_spans()
    assert (plan.name, generate.name, server.name) == ("router.plan", "engine.generate", CHAT)
    assert generate.attributes is not None
    assert generate.attributes["helixflow.target"] == f"local/{LOCAL}"
    assert server.context is not None
    assert parent_id(generate) == server.context.span_id
    assert generate.status.status_code is StatusCode.UNSET
    assert "helixflow.abandoned" not in generate.attributes  # a stream: ended at its end
