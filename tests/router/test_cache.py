"""The response cache: keys, the memory and Redis backends, configuration, and SSE replay."""

from __future__ import annotations

import logging
import socket
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis

from helixflow.api.openai.protocol import ChatCompletionChunk
from helixflow.api.openai.sse import ChunkWriter
from helixflow.errors import ConfigurationError
from helixflow.router.cache import (
    CachedReply,
    MemoryResponseCache,
    RedisResponseCache,
    ResponseCache,
    build_cache,
    cache_key,
    redis_client,
    replay_chunks,
)
from helixflow.routing_config import ResponseCacheConfig
from tests.router.factories import Clock
from tests.tcp_proxy import TcpProxy

CHAT = "/v1/chat/completions"


def reply(body: bytes = b'{"ok":true}', target: str = "acme/gpt-4o-mini") -> CachedReply:
    return CachedReply(body=body, target=target, stored_at=1_700_000_000.5)


def chat_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
    }
    body.update(extra)
    return body


# -- keys ---------------------------------------------------------------------------------------
def test_key_ignores_key_order_at_every_depth() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"a": 1, "b": 2}}}]
    reordered = [{"function": {"parameters": {"b": 2, "a": 1}, "name": "f"}, "type": "function"}]
    first = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "x"}]}
    second = {"messages": [{"content": "x", "role": "user"}], "temperature": 0, "model": "m"}
    key = cache_key(CHAT, {**first, "tools": tools})
    assert key is not None
    assert key == cache_key(CHAT, {**second, "tools": reordered})
    assert key.startswith(CHAT + ":")


def test_key_ignores_delivery_and_caller_fields() -> None:
    plain = cache_key(CHAT, chat_body())
    assert plain is not None
    varied = chat_body(
        stream=True,
        stream_options={"include_usage": True},
        user="alice",
        metadata={"k": "v"},
        store=True,
        service_tier="auto",
        max_tokens=None,
    )
    assert cache_key(CHAT, varied) == plain


def test_key_changes_with_content_model_and_endpoint() -> None:
    plain = cache_key(CHAT, chat_body())
    assert plain is not None
    assert cache_key(CHAT, chat_body(model="other")) != plain
    assert cache_key(CHAT, chat_body(messages=[{"role": "user", "content": "ho"}])) != plain
    assert cache_key(CHAT, chat_body(max_tokens=5)) != plain
    assert cache_key("/v1/completions", chat_body()) != plain


@pytest.mark.parametrize(
    ("sampling", "cacheable"),
    [
        ({}, False),  # temperature defaults to 1.0
        ({"temperature": 0.7}, False),
        ({"temperature": None}, False),
        ({"temperature": False}, False),  # not a number, whatever Python thinks
        ({"temperature": 0}, True),
        ({"temperature": 0.0}, True),
        ({"temperature": 0.7, "seed": 42}, True),
        ({"seed": 0}, True),
        ({"seed": None}, False),
    ],
)
def test_only_deterministic_requests_have_a_key(sampling: dict[str, Any], cacheable: bool) -> None:
    body = {"model": "m", "prompt": "p", **sampling}
    assert (cache_key("/v1/completions", body) is not None) is cacheable


def test_seed_is_part_of_the_key() -> None:
    assert cache_key(CHAT, chat_body(seed=1)) != cache_key(CHAT, chat_body(seed=2))


def test_unencodable_request_is_not_cached() -> None:
    assert cache_key(CHAT, chat_body(seed=2**70)) is None


# -- memory backend -----------------------------------------------------------------------------
async def test_memory_round_trip_and_stats() -> None:
    cache = MemoryResponseCache(60, 10_000, 1_000)
    assert cache.backend == "memory"
    assert await cache.get("k") is None
    stored = reply()
    assert await cache.put("k", stored) is True
    assert await cache.get("k") == stored
    assert await cache.get("k") == stored
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.stores, stats.evictions) == (2, 1, 1, 0)
    assert stats.entries == 1
    assert stats.bytes == MemoryResponseCache.entry_size("k", stored)


async def test_memory_evicts_least_recently_used_first() -> None:
    entry = MemoryResponseCache.entry_size("a", reply())
    cache = MemoryResponseCache(60, 3 * entry, 1_000)
    for key in "abc":
        assert await cache.put(key, reply())
    assert await cache.get("a") is not None  # a is now the most recently used
    assert await cache.put("d", reply())
    assert await cache.get("b") is None
    for key in "acd":
        assert await cache.get(key) is not None
    assert await cache.put("e", reply())  # reads made the order a, c, d: a goes
    assert await cache.get("a") is None
    assert await cache.get("c") is not None
    stats = cache.stats()
    assert stats.evictions == 2
    assert stats.entries == 3
    assert stats.bytes == 3 * entry


async def test_memory_keeps_within_the_byte_budget() -> None:
    cache = MemoryResponseCache(60, 5_000, 2_000)
    sizes = []
    for i in range(40):
        body = b"x" * (37 * i % 1_900)
        assert await cache.put(f"key-{i}", reply(body))
        sizes.append(MemoryResponseCache.entry_size(f"key-{i}", reply(body)))
        stats = cache.stats()
        assert stats.bytes is not None
        assert stats.bytes <= 5_000
    assert await cache.get("key-39") is not None  # the newest always survives
    assert await cache.get("key-0") is None
    stats = cache.stats()
    assert stats.entries is not None
    assert stats.entries + stats.evictions == 40
    assert stats.bytes == sum(sizes[40 - stats.entries :])


async def test_memory_replacing_an_entry_counts_it_once() -> None:
    cache = MemoryResponseCache(60, 10_000, 1_000)
    await cache.put("k", reply(b"a" * 100))
    await cache.put("k", reply(b"b" * 10))
    assert cache.stats().bytes == MemoryResponseCache.entry_size("k", reply(b"b" * 10))
    assert cache.stats().entries == 1
    found = await cache.get("k")
    assert found is not None
    assert found.body == b"b" * 10


async def test_memory_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache = MemoryResponseCache(10, 10_000, 1_000, clock=clock)
    await cache.put("k", reply())
    clock.advance(9.9)
    assert await cache.get("k") is not None  # a hit does not extend the TTL
    clock.advance(0.1)
    assert await cache.get("k") is None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.bytes) == (1, 1, 0, 0)


async def test_memory_refuses_oversized_entries() -> None:
    cache = MemoryResponseCache(60, 100_000, 1_000)
    assert await cache.put("big", reply(b"x" * 1_001)) is False
    assert await cache.put("fits", reply(b"x" * 1_000)) is True
    assert await cache.get("big") is None
    assert cache.stats().stores == 1


async def test_memory_with_no_budget_stores_nothing() -> None:
    cache = MemoryResponseCache(60, 0, 1_000)
    assert await cache.put("k", reply()) is False
    assert await cache.get("k") is None
    assert cache.stats().entries == 0


async def test_memory_refuses_an_entry_larger_than_the_whole_budget() -> None:
    cache = MemoryResponseCache(60, 500, 1_000)
    await cache.put("small", reply(b"s"))
    assert await cache.put("big", reply(b"x" * 600)) is False
    assert await cache.get("small") is not None  # not flushed for an entry that cannot fit


# -- redis backend ------------------------------------------------------------------------------
async def test_redis_round_trip(redis_url: str, redis_key_prefix: str) -> None:
    cache = RedisResponseCache(redis_client(redis_url), 60, 1_000_000, redis_key_prefix)
    try:
        assert cache.backend == "redis"
        assert await cache.get("k") is None
        body = orjson.dumps({"choices": [{"message": {"content": "line\nbreak é"}}]})
        stored = reply(body + b"\n")  # raw newlines in the body must survive the header split
        assert await cache.put("k", stored) is True
        assert await cache.get("k") == stored
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.stores, stats.errors) == (1, 1, 1, 0)
        assert stats.entries is None
        assert stats.bytes is None
    finally:
        await cache.close()


async def test_redis_sets_the_ttl(redis_url: str, redis_key_prefix: str) -> None:
    cache = RedisResponseCache(redis_client(redis_url), 60, 1_000_000, redis_key_prefix)
    try:
        await cache.put("k", reply())
    finally:
        await cache.close()
    with redis.Redis.from_url(redis_url) as direct:
        ttl_ms = direct.pttl(redis_key_prefix + "k")
    assert 0 < ttl_ms <= 60_000


async def test_redis_replicas_share_entries(redis_url: str, redis_key_prefix: str) -> None:
    first = RedisResponseCache(redis_client(redis_url), 60, 1_000_000, redis_key_prefix)
    second = RedisResponseCache(redis_client(redis_url), 60, 1_000_000, redis_key_prefix)
    try:
        assert await first.put("k", reply(target="local/smollm2"))
        found = await second.get("k")
        assert found == reply(target="local/smollm2")
        other_namespace = RedisResponseCache(
            redis_client(redis_url), 60, 1_000_000, redis_key_prefix + "other:"
        )
        assert await other_namespace.get("k") is None
        await other_namespace.close()
    finally:
        await first.close()
        await second.close()


async def test_redis_refuses_oversized_entries(redis_url: str, redis_key_prefix: str) -> None:
    cache = RedisResponseCache(redis_client(redis_url), 60, 100, redis_key_prefix)
    try:
        assert await cache.put("k", reply(b"x" * 101)) is False
        assert await cache.get("k") is None
    finally:
        await cache.close()


@pytest.mark.parametrize(
    "raw",
    [b"no header", b'{"v":99,"target":"t","stored_at":1}\n{}', b"[1,2]\n{}", b"{bad json\n{}"],
)
async def test_redis_unreadable_entry_is_a_miss(
    redis_url: str, redis_key_prefix: str, raw: bytes
) -> None:
    with redis.Redis.from_url(redis_url) as direct:
        direct.set(redis_key_prefix + "k", raw, px=60_000)
    cache = RedisResponseCache(redis_client(redis_url), 60, 1_000, redis_key_prefix)
    try:
        assert await cache.get("k") is None
        assert cache.stats().misses == 1
    finally:
        await cache.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_redis_down_is_a_miss_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    client = redis_client(f"redis://127.0.0.1:{closed_port()}/0")
    cache = RedisResponseCache(client, 60, 1_000, "p:", clock=clock, pause_after_error_s=1.0)
    caplog.set_level(logging.WARNING, logger="helixflow.router.cache")
    try:
        assert await cache.get("k") is None
        assert cache.stats().errors == 1
        assert await cache.put("k", reply()) is False  # paused: Redis is not asked again
        assert await cache.get("k") is None
        assert cache.stats().errors == 1
        clock.advance(1.0)
        assert await cache.put("k", reply()) is False  # the pause is over: it tries again
        assert cache.stats().errors == 2
        clock.advance(1.0)
        assert await cache.get("k") is None
        stats = cache.stats()
        assert (stats.errors, stats.misses, stats.hits, stats.stores) == (3, 3, 0, 0)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # three failures within 30 s: one warning
        assert "Redis" in warnings[0].getMessage()
        clock.advance(30.0)
        assert await cache.get("k") is None
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    finally:
        await cache.close()


def via_proxy(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{userinfo + '@' if userinfo else ''}127.0.0.1:{port}").geturl()


async def test_redis_outage_and_recovery(redis_url: str, redis_key_prefix: str) -> None:
    """Redis goes away mid-use and comes back: misses meanwhile, hits again after the pause."""
    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    clock = Clock()
    client = redis_client(via_proxy(redis_url, proxy.port))
    cache = RedisResponseCache(client, 60, 1_000, redis_key_prefix, clock=clock)
    try:
        assert await cache.put("k", reply())
        assert await cache.get("k") == reply()
        await proxy.cut()
        assert await cache.get("k") is None
        assert await cache.put("k2", reply()) is False
        assert cache.stats().errors == 1  # the put came within the pause
        await proxy.restore()
        assert await cache.get("k") is None  # still paused: Redis not asked
        clock.advance(1.0)
        assert await cache.get("k") == reply()
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.stores, stats.errors) == (2, 2, 1, 1)
    finally:
        await cache.close()
        await proxy.close()


# -- configuration ------------------------------------------------------------------------------
def test_build_cache_disabled() -> None:
    assert build_cache(ResponseCacheConfig(enabled=False), "redis://127.0.0.1:6379/0") is None


async def test_build_cache_memory() -> None:
    config = ResponseCacheConfig(enabled=True, ttl_s=5, max_bytes=0, max_entry_bytes=10)
    cache = build_cache(config, None)
    assert isinstance(cache, MemoryResponseCache)
    assert await cache.put("k", reply()) is False  # max_bytes 0 came through
    await cache.close()


def test_build_cache_redis_needs_a_url() -> None:
    with pytest.raises(ConfigurationError, match="HELIXFLOW_REDIS_URL"):
        build_cache(ResponseCacheConfig(enabled=True, backend="redis"), None)
    with pytest.raises(ConfigurationError, match="HELIXFLOW_REDIS_URL"):
        build_cache(ResponseCacheConfig(enabled=True, backend="redis"), "")


def test_build_cache_rejects_a_bad_redis_url() -> None:
    with pytest.raises(ConfigurationError, match="HELIXFLOW_REDIS_URL"):
        build_cache(ResponseCacheConfig(enabled=True, backend="redis"), "http://127.0.0.1:6379")


async def test_build_cache_redis(redis_url: str, redis_key_prefix: str) -> None:
    config = ResponseCacheConfig(enabled=True, backend="redis", key_prefix=redis_key_prefix)
    cache: ResponseCache | None = build_cache(config, redis_url)
    assert isinstance(cache, RedisResponseCache)
    try:
        assert await cache.put("k", reply())
        assert await cache.get("k") == reply()
    finally:
        await cache.close()
    with redis.Redis.from_url(redis_url) as direct:
        assert direct.exists(redis_key_prefix + "k") == 1  # config.key_prefix was used


# -- replay -------------------------------------------------------------------------------------
def parse(chunks: list[bytes]) -> list[dict[str, Any]]:
    assert chunks[-1] == b"data: [DONE]\n\n"
    events = []
    for chunk in chunks[:-1]:
        assert chunk.startswith(b"data: ")
        assert chunk.endswith(b"\n\n")
        assert b"\n" not in chunk[:-2]
        events.append(orjson.loads(chunk[len(b"data: ") :]))
    return events


def reassemble_chat(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """What a client builds from the deltas (as the openai SDK's stream helpers do)."""
    out: dict[int, dict[str, Any]] = {}
    for event in events:
        for choice in event["choices"]:
            state = out.setdefault(
                choice["index"],
                {"role": None, "content": "", "tool_calls": {}, "finish_reason": None},
            )
            delta = choice["delta"]
            if "role" in delta:
                state["role"] = delta["role"]
            state["content"] += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = state["tool_calls"].setdefault(
                    call["index"], {"id": None, "type": None, "name": "", "arguments": ""}
                )
                slot["id"] = call.get("id") or slot["id"]
                slot["type"] = call.get("type") or slot["type"]
                slot["name"] += call.get("function", {}).get("name") or ""
                slot["arguments"] += call.get("function", {}).get("arguments") or ""
            if choice["finish_reason"] is not None:
                assert state["finish_reason"] is None
                state["finish_reason"] = choice["finish_reason"]
    return out


def expected_chat(original: dict[str, Any]) -> dict[int, dict[str, Any]]:
    out = {}
    for choice in original["choices"]:
        message = choice["message"]
        calls = {
            i: {
                "id": c["id"],
                "type": c["type"],
                "name": c["function"]["name"],
                "arguments": c["function"]["arguments"],
            }
            for i, c in enumerate(message.get("tool_calls") or [])
        }
        out[choice["index"]] = {
            "role": "assistant",
            "content": message["content"] or "",
            "tool_calls": calls,
            "finish_reason": choice["finish_reason"],
        }
    return out


USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def chat_reply(*messages: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_abc",
        "choices": [
            {"index": i, "message": m, "logprobs": None, "finish_reason": finish}
            for i, m in enumerate(messages)
        ],
        "usage": USAGE,
    }


def check_headers(events: list[dict[str, Any]], original: dict[str, Any], obj: str) -> None:
    for event in events:
        assert event["id"] == original["id"]
        assert event["object"] == obj
        assert event["created"] == original["created"]
        assert event["model"] == original["model"]
        assert event["system_fingerprint"] == original["system_fingerprint"]


@pytest.mark.parametrize("include_usage", [False, True])
def test_replay_chat_content(include_usage: bool) -> None:
    original = chat_reply({"role": "assistant", "content": "Hello there! \u00e9\n"})
    events = parse(replay_chunks(original, include_usage=include_usage))
    check_headers(events, original, "chat.completion.chunk")
    assert reassemble_chat(events) == expected_chat(original)
    for event in events:
        if event["choices"]:
            ChatCompletionChunk.model_validate(event)
    if include_usage:
        assert events[-1]["choices"] == []
        assert events[-1]["usage"] == USAGE
        assert all(e["usage"] is None for e in events[:-1])
    else:
        assert all("usage" not in e for e in events)


def test_replay_chat_tool_calls() -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]
    original = chat_reply(
        {"role": "assistant", "content": None, "tool_calls": calls}, finish="tool_calls"
    )
    events = parse(replay_chunks(original, include_usage=True))
    assembled = reassemble_chat(events)
    assert assembled == expected_chat(original)
    assert assembled[0]["content"] == ""
    assert [c["name"] for c in assembled[0]["tool_calls"].values()] == ["get_weather", "now"]


def test_replay_chat_two_choices() -> None:
    original = chat_reply(
        {"role": "assistant", "content": "first"}, {"role": "assistant", "content": "second"}
    )
    events = parse(replay_chunks(original, include_usage=True))
    assembled = reassemble_chat(events)
    assert assembled == expected_chat(original)
    assert assembled[0]["content"] == "first"
    assert assembled[1]["content"] == "second"
    assert sum(1 for e in events if not e["choices"]) == 1  # one usage chunk for both


def test_replay_keeps_logprobs() -> None:
    logprobs = {
        "content": [{"token": "hi", "logprob": -0.1, "bytes": [104, 105], "top_logprobs": []}]
    }
    original = chat_reply({"role": "assistant", "content": "hi"})
    original["choices"][0]["logprobs"] = logprobs
    events = parse(replay_chunks(original, include_usage=False))
    sent = [c["logprobs"] for e in events for c in e["choices"] if c["logprobs"] is not None]
    assert sent == [logprobs]


def test_replay_text_completion() -> None:
    original = {
        "id": "cmpl-9",
        "object": "text_completion",
        "created": 1_700_000_001,
        "model": "smollm2-135m",
        "system_fingerprint": None,
        "choices": [
            {"index": 0, "text": "once upon", "logprobs": None, "finish_reason": "length"},
            {"index": 1, "text": "", "logprobs": None, "finish_reason": "stop"},
        ],
        "usage": USAGE,
    }
    events = parse(replay_chunks(original, include_usage=True))
    check_headers(events, original, "text_completion")
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for event in events[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"] is not None:
                assert choice["index"] not in finishes
                finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {0: "once upon", 1: ""}
    assert finishes == {0: "length", 1: "stop"}
    assert events[-1]["choices"] == []
    assert events[-1]["usage"] == USAGE


@pytest.mark.parametrize("include_usage", [False, True])
def test_replay_bytes_match_the_live_stream_writer(include_usage: bool) -> None:
    original = chat_reply({"role": "assistant", "content": "x"})
    writer = ChunkWriter(
        completion_id=original["id"],
        object_name="chat.completion.chunk",
        created=original["created"],
        model=original["model"],
        fingerprint=original["system_fingerprint"],
        include_usage=include_usage,
    )
    chunks = replay_chunks(original, include_usage=include_usage)
    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
    assert chunks[0] == writer.choice({**role, "finish_reason": None})
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert writer.choice(finish) in chunks
    if include_usage:
        assert chunks[-2] == writer.usage(USAGE)


def test_replay_refuses_other_objects() -> None:
    with pytest.raises(ValueError, match="embedding"):
        replay_chunks({"object": "embedding", "data": []}, include_usage=False)


async def test_cached_reply_replays_what_was_stored() -> None:
    """End to end: a reply stored as bytes comes back and streams the same content."""
    original = chat_reply({"role": "assistant", "content": "cached answer"})
    cache = MemoryResponseCache(60, 100_000, 10_000)
    key = cache_key(CHAT, chat_body(stream=True))
    assert key is not None
    await cache.put(key, reply(orjson.dumps(original)))
    hit = await cache.get(cache_key(CHAT, chat_body()) or "")
    assert hit is not None
    assert orjson.loads(hit.body) == original
    events = parse(replay_chunks(orjson.loads(hit.body), include_usage=False))
    assert reassemble_chat(events)[0]["content"] == "cached answer"
