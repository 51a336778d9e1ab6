"""The OpenAI-compatible provider client: Retry-After, error mapping, and real HTTP against a
fake upstream (replies, streams, timeouts, refused connections, probes, headers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from helixflow import __version__
from helixflow.errors import UpstreamError
from helixflow.providers.openai_compat import (
    OpenAICompatProvider,
    UpstreamStream,
    connection_error,
    retry_after_seconds,
    upstream_status_error,
)
from helixflow.routing_config import ProviderConfig
from tests.conftest import free_port
from tests.fake_upstream import Behaviour, FakeUpstream, close_after, hang, status

TARGET = "acme/gpt-4o-mini"
CHAT_BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
)


def chat_body(**extra: object) -> bytes:
    body = orjson.loads(CHAT_BODY)
    body.update(extra)
    return orjson.dumps(body)


# --- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("3", 3.0), ("0.5", 0.5), (" 2 ", 2.0), ("0", 0.0), ("-4", 0.0)],
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert retry_after_seconds(value) == seconds


def test_retry_after_as_an_http_date() -> None:
    moment = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
    header = format_datetime(moment, usegmt=True)  # "Wed, 01 May 2024 12:00:30 GMT"
    now = moment.timestamp() - 30.0
    assert retry_after_seconds(header, now=now) == pytest.approx(30.0)
    assert retry_after_seconds(header, now=now + 60.0) == 0.0  # a date in the past


@pytest.mark.parametrize("value", [None, "", "soon", "tomorrow at noon", "inf", "nan", "1e400"])
def test_absent_or_unusable_retry_after_is_none(value: str | None) -> None:
    assert retry_after_seconds(value) is None


# --- status mapping --------------------------------------------------------------------------


def openai_error(message: str, **fields: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": None, "code": None, **fields}})


@pytest.mark.parametrize("code", [400, 413, 415, 422])
def test_a_refused_request_is_the_clients_fault(code: int) -> None:
    body = openai_error(
        "max_tokens is too large", type="invalid_request_error", code="bad_max", param="max_tokens"
    )
    error = upstream_status_error(TARGET, code, body, "10")
    assert error.status_code == code
    assert error.upstream_status == code
    assert not error.retryable
    assert not error.target_fault
    assert error.target == TARGET
    assert error.message == f"{TARGET} refused the request: max_tokens is too large"
    assert (error.code, error.param, error.error_type) == (
        "bad_max",
        "max_tokens",
        "invalid_request_error",
    )


def test_a_refusal_without_details_gets_defaults() -> None:
    error = upstream_status_error(TARGET, 400, b"", None)
    assert error.message == f"{TARGET} refused the request: no error body"
    assert (error.code, error.param, error.error_type) == (
        "invalid_request",
        None,
        "invalid_request_error",
    )


def test_429_is_a_rate_limit_with_its_retry_after() -> None:
    error = upstream_status_error(TARGET, 429, openai_error("slow down"), "7")
    assert error.status_code == 429
    assert error.upstream_status == 429
    assert error.error_type == "rate_limit_error"
    assert error.code == "upstream_rate_limited"
    assert error.retry_after == 7.0
    assert error.headers == {"Retry-After": "7"}
    assert error.retryable
    assert error.target_fault
    assert error.message == f"{TARGET} is rate limiting: slow down"
    assert upstream_status_error(TARGET, 429, b"", None).retry_after is None


@pytest.mark.parametrize("code", [500, 502, 503, 504, 529])
def test_5xx_is_a_retryable_502(code: int) -> None:
    error = upstream_status_error(TARGET, code, b"<html>Bad Gateway</html>", "2")
    assert error.status_code == 502
    assert error.upstream_status == code
    assert error.retryable
    assert error.target_fault
    assert error.retry_after == 2.0
    assert error.error_type == "upstream_error"
    assert error.message == f"{TARGET} answered HTTP {code}: <html>Bad Gateway</html>"


@pytest.mark.parametrize("code", [401, 403, 404])
def test_auth_and_not_found_are_the_targets_fault_and_final(code: int) -> None:
    error = upstream_status_error(TARGET, code, orjson.dumps({"error": "no such key"}), None)
    assert error.status_code == 502
    assert error.upstream_status == code
    assert not error.retryable
    assert error.target_fault
    assert error.message == f"{TARGET} answered HTTP {code}: no such key"


def test_an_inf_retry_after_does_not_break_the_mapping() -> None:
    error = upstream_status_error(TARGET, 503, b"", "inf")
    assert error.retry_after is None
    assert error.headers == {}


def test_connection_errors() -> None:
    for exc in (TimeoutError(), aiohttp.ServerTimeoutError("read")):
        timeout = connection_error(TARGET, exc)
        assert (timeout.status_code, timeout.code) == (504, "upstream_timeout")
        assert timeout.message == f"{TARGET} did not answer in time"
        assert timeout.retryable
        assert timeout.target_fault
    refused = connection_error(TARGET, ConnectionRefusedError(111, "Connection refused"))
    assert (refused.status_code, refused.code) == (502, "upstream_unreachable")
    assert refused.message.startswith(f"{TARGET} could not be reached: ")
    assert "Connection refused" in refused.message
    assert connection_error(TARGET, OSError()).message.endswith("could not be reached: OSError")


# --- against a fake upstream -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream("acme", models=("gpt-4o-mini",)) as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def _fresh(fake: FakeUpstream) -> None:
    fake.reset()


async def started(config: ProviderConfig, api_key: str | None = None) -> OpenAICompatProvider:
    provider = OpenAICompatProvider(config, api_key)
    await provider.start()
    return provider


@pytest.fixture
async def provider(fake: FakeUpstream) -> AsyncIterator[OpenAICompatProvider]:
    config = ProviderConfig(
        name="acme",
        base_url=fake.base_url,
        models=["gpt-4o-mini"],
        headers={"X-Org": "org-7"},
    )
    p = await started(config, "sk-acme-123")
    yield p
    await p.stop()


async def test_post_returns_the_body_usage_and_passed_headers(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    fake.enqueue(Behaviour(headers={"x-request-id": "up-1", "x-internal": "no"}))
    reply = await provider.post(TARGET, "chat/completions", CHAT_BODY)
    data = orjson.loads(reply.body)
    assert data["choices"][0]["message"]["content"] == "Hello from acme."
    assert reply.usage == data["usage"]
    assert reply.usage is not None
    assert reply.usage["completion_tokens"] == 4
    assert reply.headers == {"x-request-id": "up-1"}
    (request,) = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.body == orjson.loads(CHAT_BODY)


async def test_requests_carry_the_key_and_headers(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    await provider.post(TARGET, "/chat/completions", CHAT_BODY, {"X-Call": "c1"})
    (request,) = fake.requests
    assert request.headers["authorization"] == "Bearer sk-acme-123"
    assert request.headers["x-org"] == "org-7"
    assert request.headers["x-call"] == "c1"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"helixflow/{__version__}"


async def test_no_key_no_authorization_header(fake: FakeUpstream) -> None:
    p = await started(ProviderConfig(name="acme", base_url=fake.base_url, models=["m"]))
    try:
        await p.post(TARGET, "chat/completions", CHAT_BODY)
    finally:
        await p.stop()
    (request,) = fake.requests
    assert "authorization" not in request.headers


async def test_an_error_status_is_mapped_and_names_the_target(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    fake.enqueue(status(429, retry_after=2), status(400), status(503))
    with pytest.raises(UpstreamError) as limited:
        await provider.post(TARGET, "chat/completions", CHAT_BODY)
    assert limited.value.status_code == 429
    assert limited.value.retry_after == 2.0
    assert limited.value.message.startswith(f"{TARGET} is rate limiting: acme: HTTP 429")
    with pytest.raises(UpstreamError) as refused:
        await provider.post(TARGET, "chat/completions", CHAT_BODY)
    assert not refused.value.target_fault
    assert refused.value.status_code == 400
    with pytest.raises(UpstreamError) as unavailable:
        await provider.stream(TARGET, "chat/completions", chat_body(stream=True))
    assert unavailable.value.upstream_status == 503
    assert unavailable.value.retryable
    # the pooled connection is still good after error replies
    assert (await provider.post(TARGET, "chat/completions", CHAT_BODY)).usage is not None


async def test_stream_events_are_split_per_sse_event(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    fake.enqueue(Behaviour(headers={"x-request-id": "up-2"}))
    body = chat_body(stream=True, stream_options={"include_usage": True})
    stream = await provider.stream(TARGET, "chat/completions", body)
    assert isinstance(stream, UpstreamStream)
    assert stream.headers == {"x-request-id": "up-2"}
    events = [event async for event in stream.events()]
    stream.close()
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [orjson.loads(e[len(b"data: ") :]) for e in events[:-1]]
    # role, four tokens, finish, usage
    assert len(chunks) == 7
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello from acme."
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4


async def test_a_stream_cut_short_raises_after_the_events_sent(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    fake.enqueue(close_after(2))
    stream = await provider.stream(TARGET, "chat/completions", chat_body(stream=True))
    received: list[bytes] = []

    async def read_all() -> None:
        async for event in stream.events():
            received.append(event)

    with pytest.raises(UpstreamError) as caught:
        await read_all()
    stream.close()
    assert len(received) == 2
    assert caught.value.target == TARGET
    assert caught.value.code == "upstream_unreachable"


async def test_a_refused_connection_is_upstream_unreachable() -> None:
    config = ProviderConfig(
        name="acme", base_url=f"http://127.0.0.1:{free_port()}/v1", models=["m"]
    )
    p = await started(config)
    try:
        with pytest.raises(UpstreamError) as caught:
            await p.post(TARGET, "chat/completions", CHAT_BODY)
        with pytest.raises(UpstreamError) as probed:
            await p.probe()
    finally:
        await p.stop()
    error = caught.value
    assert (error.code, error.status_code) == ("upstream_unreachable", 502)
    assert error.retryable
    assert error.target_fault
    assert error.message.startswith(f"{TARGET} could not be reached")
    assert probed.value.code == "upstream_unreachable"
    assert probed.value.target == "acme/*"


async def test_a_connection_dropped_without_an_answer_is_unreachable(
    provider: OpenAICompatProvider, fake: FakeUpstream
) -> None:
    fake.enqueue(close_after(0))
    with pytest.raises(UpstreamError) as caught:
        await provider.post(TARGET, "chat/completions", CHAT_BODY)
    assert caught.value.code == "upstream_unreachable"


@pytest.mark.parametrize("streamed", [False, True])
async def test_no_first_byte_in_time_is_an_upstream_timeout(
    fake: FakeUpstream, streamed: bool
) -> None:
    config = ProviderConfig(
        name="acme", base_url=fake.base_url, models=["m"], first_byte_timeout_s=0.2
    )
    p = await started(config)
    fake.enqueue(hang())
    body = chat_body(stream=True) if streamed else CHAT_BODY
    send = p.stream if streamed else p.post
    try:
        with pytest.raises(UpstreamError) as caught:
            await send(TARGET, "chat/completions", body)
    finally:
        fake.reset()  # let the hanging request go
        await p.stop()
    error = caught.value
    assert (error.code, error.status_code) == ("upstream_timeout", 504)
    assert error.message == f"{TARGET} did not answer in time"
    assert error.retryable
    assert error.target_fault


async def test_probe_ok_and_failing(provider: OpenAICompatProvider, fake: FakeUpstream) -> None:
    await provider.probe()
    assert fake.count("/v1/models") == 1
    assert fake.requests[0].headers["authorization"] == "Bearer sk-acme-123"
    fake.enqueue(status(503), path="/v1/models")
    with pytest.raises(UpstreamError) as caught:
        await provider.probe()
    assert caught.value.target == "acme/*"
    assert caught.value.upstream_status == 503
    fake.enqueue(status(401), path="/v1/models")
    with pytest.raises(UpstreamError) as unauthorized:
        await provider.probe()
    assert unauthorized.value.upstream_status == 401
    await provider.probe()
    assert fake.count("/v1/models") == 4


async def test_probe_times_out(fake: FakeUpstream) -> None:
    p = await started(ProviderConfig(name="acme", base_url=fake.base_url, models=["m"]))
    fake.enqueue(hang(), path="/v1/models")
    try:
        with pytest.raises(UpstreamError) as caught:
            await p.probe(timeout_s=0.2)
    finally:
        fake.reset()
        await p.stop()
    assert caught.value.code == "upstream_timeout"


async def test_a_provider_must_be_started() -> None:
    p = OpenAICompatProvider(
        ProviderConfig(name="acme", base_url="http://h/v1/", models=["m"]), None
    )
    assert p.url("/chat/completions") == "http://h/v1/chat/completions"
    assert p.url("models") == "http://h/v1/models"
    with pytest.raises(RuntimeError, match="acme is not started"):
        await p.post(TARGET, "chat/completions", CHAT_BODY)
    await p.stop()  # harmless before start
    await p.start()
    await p.stop()
    await p.stop()
    with pytest.raises(RuntimeError):
        _ = p.session


# --- odd upstreams ---------------------------------------------------------------------------


def sse_app(payload: bytes) -> web.Application:
    """An upstream that sends ``payload`` as its event stream, in small writes."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(0, len(payload), 7):
            await response.write(payload[i : i + 7])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


def reply_app(status_code: int, body: bytes) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status_code, body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


async def against(app: web.Application) -> tuple[TestServer, OpenAICompatProvider]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    config = ProviderConfig(name="odd", base_url=f"http://127.0.0.1:{server.port}/v1", models=["m"])
    return server, await started(config)


async def test_sse_comments_crlf_and_multi_line_events() -> None:
    payload = (
        b": keep-alive\n\n"
        b'data: {"a": 1}\r\n\r\n'
        b"event: delta\ndata: line one\ndata: line two\n\n"
        b": another comment\n"
        b"data: [DONE]"  # no blank line, no newline before the end
    )
    server, p = await against(sse_app(payload))
    try:
        stream = await p.stream("odd/m", "chat/completions", b"{}")
        events = [event async for event in stream.events()]
        stream.close()
    finally:
        await p.stop()
        await server.close()
    assert events == [
        b'data: {"a": 1}\r\n\n',
        b"event: delta\ndata: line one\ndata: line two\n\n",
        b"data: [DONE]\n\n",
    ]


async def test_a_reply_that_is_not_json_is_a_bad_response() -> None:
    server, p = await against(reply_app(200, b"<html>hello</html>"))
    try:
        with pytest.raises(UpstreamError) as caught:
            await p.post("odd/m", "chat/completions", b"{}")
    finally:
        await p.stop()
        await server.close()
    assert caught.value.code == "upstream_bad_response"
    assert caught.value.target == "odd/m"
    assert caught.value.target_fault


async def test_an_error_body_that_is_not_json_is_quoted() -> None:
    server, p = await against(reply_app(502, b"upstream connect error"))
    try:
        with pytest.raises(UpstreamError) as caught:
            await p.post("odd/m", "chat/completions", b"{}")
    finally:
        await p.stop()
        await server.close()
    assert caught.value.message == "odd/m answered HTTP 502: upstream connect error"
    assert caught.value.retryable


async def test_a_stream_request_can_be_cancelled_while_waiting(fake: FakeUpstream) -> None:
    p = await started(ProviderConfig(name="acme", base_url=fake.base_url, models=["m"]))
    fake.enqueue(hang())
    try:
        task = asyncio.create_task(p.stream(TARGET, "chat/completions", chat_body(stream=True)))
        await asyncio.to_thread(fake.wait_for, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        fake.reset()
        await p.stop()
    # the cancellation is not turned into an UpstreamError (the client left, nobody failed)
    assert task.cancelled()
