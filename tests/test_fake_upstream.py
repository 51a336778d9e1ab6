"""The fake upstream provider itself: OpenAI's client must accept what it sends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fake_upstream import (
    FakeUpstream,
    chunk_delay,
    close_after,
    delay,
    hang,
    status,
)


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream("up1", models=["m1"]) as upstream:
        yield upstream


def client(fake: FakeUpstream, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0, timeout=timeout)


def test_stream_with_usage_through_openai_client(fake: FakeUpstream) -> None:
    assert fake.base_url.endswith("/v1")
    stream = client(fake).chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "say hello to me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from up1."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens == 4
    (req,) = fake.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer k"
    assert req.body["stream"] is True
    assert fake.count("chat/completions") == 1


def test_other_endpoints(fake: FakeUpstream) -> None:
    c = client(fake)
    assert [m.id for m in c.models.list()] == ["m1"]
    reply = c.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content == "Hello from"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 2
    text = "".join(
        ch.choices[0].text
        for ch in c.completions.create(model="m1", prompt="once upon", stream=True)
        if ch.choices
    )
    assert text == "Hello from up1."
    first = c.embeddings.create(model="m1", input=["a", "b"]).data  # base64 on the wire
    again = c.embeddings.create(model="m1", input="a", encoding_format="float").data
    assert len(first[0].embedding) == 8
    assert first[0].embedding == pytest.approx(again[0].embedding, abs=1e-6)
    assert first[0].embedding != pytest.approx(first[1].embedding)


def test_429_with_retry_after_then_ok(fake: FakeUpstream) -> None:
    fake.enqueue(status(429, retry_after=2))
    with pytest.raises(openai.RateLimitError) as info:
        client(fake).chat.completions.create(model="m1", messages=[])
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    assert "up1" in info.value.body["message"]  # type: ignore[index]
    # The queue held one behaviour: the next request is answered.
    reply = client(fake).chat.completions.create(model="m1", messages=[])
    assert reply.choices[0].message.content == "Hello from up1."


def test_close_after_cuts_stream_and_non_stream(fake: FakeUpstream) -> None:
    fake.enqueue(close_after(3), close_after(0))
    received: list[str] = []
    stream = client(fake).chat.completions.create(model="m1", messages=[], stream=True)
    with pytest.raises(openai.APIConnectionError):  # httpx: incomplete chunked body
        received.extend(ch.choices[0].delta.content or "" for ch in stream)
    assert received == ["", "Hello", " from"]  # role chunk + 2 tokens, no finish
    with pytest.raises(openai.APIConnectionError):
        client(fake).chat.completions.create(model="m1", messages=[])
    assert fake.count() == 2


def test_down_refuses_then_up_serves_on_same_port(fake: FakeUpstream) -> None:
    port = fake.port
    with httpx.Client(base_url=fake.url, timeout=5) as http:
        assert http.get("/v1/models").status_code == 200  # a kept-alive connection
        fake.down()
        with pytest.raises(httpx.TransportError):
            http.get("/v1/models")
        with pytest.raises(httpx.ConnectError):
            httpx.get(fake.url + "/v1/models")
        fake.up()
        assert fake.port == port
        assert http.get("/v1/models").status_code == 200


def test_delays_hang_and_default(fake: FakeUpstream) -> None:
    fake.default = chunk_delay(0.05)
    fake.enqueue(delay(0.2))
    start = time.monotonic()
    client(fake).chat.completions.create(model="m1", messages=[])
    assert time.monotonic() - start >= 0.2
    start = time.monotonic()
    list(client(fake).chat.completions.create(model="m1", messages=[], stream=True))
    assert time.monotonic() - start >= 0.05 * 5  # 6 events, 5 pauses
    fake.enqueue(hang())
    with pytest.raises(openai.APITimeoutError):
        client(fake, timeout=0.3).chat.completions.create(model="m1", messages=[])
    fake.enqueue(hang())
    threading.Timer(0.2, fake.reset).start()  # releases it: the connection is closed
    start = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        client(fake).chat.completions.create(model="m1", messages=[])
    assert time.monotonic() - start < 5  # closed, not timed out (10 s)
    # A probe of /v1/models does not take queued POST behaviours.
    fake.reset()
    fake.enqueue(status(500))
    assert httpx.get(fake.base_url + "/models").status_code == 200
    assert fake.queued == 1
