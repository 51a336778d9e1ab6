"""The router end to end: a HelixFlow server in front of fake upstream providers over real HTTP.

Providers: ``acme`` serves ``gpt-4o-mini`` (falling back to ``backup-model``), ``backup`` serves
``backup-model``, ``flaky`` serves ``flaky-model`` (its own breaker, falling back to
``backup-model``), ``tiny`` serves ``tiny-model`` without tools. Groups: ``fast`` (acme and
backup, round robin, session affinity) and ``toolful`` (tiny first, then acme).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.api.test_telemetry import wait_rows
from tests.conftest import ServerProcess
from tests.fake_upstream import FakeUpstream, close_after, delay, hang, ok, status

CHAT = "/v1/chat/completions"
UPSTREAM_CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say hello."}]
ACME_KEY = "sk-acme-test-key-123"
OPEN_S = 1.5
NAMES = ("acme", "backup", "flaky", "tiny", "slowpoke")


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    started = {name: FakeUpstream(name).start() for name in NAMES}
    yield started
    for fake in started.values():
        fake.stop()


@pytest.fixture(autouse=True)
def _reset(fakes: dict[str, FakeUpstream], http: httpx.Client) -> None:
    """Fresh fakes, and every circuit closed: each test starts from a healthy fleet."""
    for fake in fakes.values():
        fake.reset()
        if not fake.is_up:
            fake.up()
    for target in targets(http):
        response = http.post(f"/api/v1/router/targets/{target}/circuit", json={"state": "closed"})
        assert response.status_code == 200


@pytest.fixture(scope="module")
def gateway(
    fakes: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    os.environ["ACME_TEST_API_KEY"] = ACME_KEY
    config: dict[str, Any] = {
        "models": [
            {"id": "smollm2-135m", "bundled": "smollm2-135m", "parallel": 2},
            {
                "id": "one-slot",
                "bundled": "smollm2-135m",
                "parallel": 1,
                "context_size": 2048,
                "max_queue": 0,
                "fallbacks": ["backup-model"],
            },
        ],
        "providers": [
            {
                "name": "acme",
                "base_url": fakes["acme"].base_url,
                "api_key_env": "ACME_TEST_API_KEY",
                "models": [
                    {
                        "name": "gpt-4o-mini",
                        "fallbacks": ["backup-model"],
                        "input_price_per_mtok": 150.0,
                        "output_price_per_mtok": 600.0,
                        "quality": {"general": 0.8},
                    }
                ],
            },
            {"name": "backup", "base_url": fakes["backup"].base_url, "models": ["backup-model"]},
            {
                "name": "flaky",
                "base_url": fakes["flaky"].base_url,
                "models": [{"name": "flaky-model", "fallbacks": ["backup-model"]}],
            },
            {
                "name": "slowpoke",
                "base_url": fakes["slowpoke"].base_url,
                "first_byte_timeout_s": 0.5,
                "models": [{"name": "slow-model", "fallbacks": ["backup-model"]}],
            },
            {
                "name": "tiny",
                "base_url": fakes["tiny"].base_url,
                "models": [
                    {"name": "tiny-model", "capabilities": ["chat"], "context_window": 64},
                    {"name": "tiny-embed", "capabilities": ["embeddings"]},
                ],
            },
        ],
        "router": {
            "groups": [
                {"name": "auto"},
                {
                    "name": "fast",
                    "targets": ["acme/gpt-4o-mini", "backup/backup-model"],
                    "strategy": "round_robin",
                },
                {
                    "name": "toolful",
                    "targets": ["tiny/tiny-model", "acme/gpt-4o-mini"],
                    "strategy": "weighted",
                },
            ],
            "retry": {"attempts": 2, "backoff_s": 0.01, "backoff_max_s": 0.05},
            "breaker": {"failure_threshold": 3, "open_s": OPEN_S},
            "cache": {"enabled": True},
            "probe_interval_s": 3600,
        },
    }
    proc = ServerProcess(config, tmp_path_factory.mktemp("routing"), "routing")
    yield proc
    proc.stop()
    os.environ.pop("ACME_TEST_API_KEY", None)


@pytest.fixture(scope="module")
def http(gateway: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def client(gateway: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0)


def chat(http: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", {})
    return http.post(CHAT, json={"model": model, "messages": MESSAGES, **extra}, headers=headers)


def sse_payloads(response: httpx.Response) -> list[Any]:
    out: list[Any] = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def streamed_text(payloads: list[Any]) -> str:
    text = ""
    for payload in payloads:
        if isinstance(payload, dict):
            for choice in payload.get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text


def targets(http: httpx.Client) -> dict[str, dict[str, Any]]:
    response = http.get("/api/v1/router/targets")
    assert response.status_code == 200
    return {t["id"]: t for t in response.json()["data"]}


# --- serving through a provider --------------------------------------------------------------


def test_a_provider_model_is_served_by_its_provider(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "Hello from acme."
    assert raw.headers["x-helixflow-target"] == "acme/gpt-4o-mini"
    (sent,) = fakes["acme"].requests
    assert sent.body is not None
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.headers["authorization"] == f"Bearer {ACME_KEY}"


def test_provider_slash_model_names_the_target(
    http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    response = chat(http, "acme/gpt-4o-mini")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello from acme."
    assert fakes["acme"].count(UPSTREAM_CHAT) == 1


def test_streaming_passes_every_token_once_with_usage(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from acme."
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    (sent,) = fakes["acme"].requests
    assert sent.body is not None
    assert sent.body["stream_options"] == {"include_usage": True}


def test_the_usage_chunk_asked_for_by_the_gateway_is_not_passed_on(http: httpx.Client) -> None:
    response = chat(http, "gpt-4o-mini", stream=True)
    payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    assert all(p.get("choices") for p in payloads[:-1])  # no usage-only chunk
    assert streamed_text(payloads) == "Hello from acme."


def test_text_completions_and_embeddings_go_upstream(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    completion = client.completions.create(model="gpt-4o-mini", prompt="Hi", max_tokens=8)
    assert completion.choices[0].text == "Hello from acme."
    assert fakes["acme"].count("/v1/completions") == 1
    raw = client.embeddings.with_raw_response.create(model="tiny-embed", input=["a", "b"])
    embeddings = raw.parse()
    assert raw.headers["x-helixflow-target"] == "tiny/tiny-embed"
    assert [len(e.embedding) for e in embeddings.data] == [8, 8]
    assert fakes["tiny"].count("/v1/embeddings") == 1
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="tiny-model", input="a")
    assert refused.value.code == "wrong_model_type"


# --- retries and fallbacks -------------------------------------------------------------------


def test_a_5xx_is_retried_on_the_same_target(
    http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["acme"].enqueue(status(503))
    response = chat(http, "gpt-4o-mini")
    assert response.status_code == 200
    assert response.headers["x-helixflow-target"] == "acme/gpt-4o-mini"
    assert "retry" in response.headers["x-helixflow-route-reason"]
    assert fakes["acme"].count(UPSTREAM_CHAT) == 2
    assert fakes["backup"].count() == 0


def test_retry_after_is_honoured(http: httpx.Client, fakes: dict[str, FakeUpstream]) -> None:
    fakes["acme"].enqueue(status(429, retry_after=0.3))
    response = chat(http, "gpt-4o-mini")
    assert response.status_code == 200
    first, second = fakes["acme"].requests
    assert second.time - first.time >= 0.3


def test_a_long_retry_after_moves_on_to_the_fallback(
    http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["acme"].enqueue(status(429, retry_after=60))
    response = chat(http, "gpt-4o-mini")
    assert response.status_code == 200
    assert response.headers["x-helixflow-target"] == "backup/backup-model"
    assert fakes["acme"].count(UPSTREAM_CHAT) == 1


def test_a_failing_target_falls_back_and_the_decision_is_recorded(
    gateway: ServerProcess, http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["acme"].enqueue(status(500), status(502))
    response = chat(http, "gpt-4o-mini")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello from backup."
    assert response.headers["x-helixflow-target"] == "backup/backup-model"
    assert response.headers["x-helixflow-route-reason"].startswith("fallback")
    assert fakes["acme"].count(UPSTREAM_CHAT) == 2
    request_id = response.headers["x-request-id"]
    (decision,) = wait_rows(
        gateway.database_url, table_name="routing_decisions", request_id=request_id
    )
    assert decision["chosen_target"] == "backup/backup-model"
    assert decision["fallback_attempts"] == 2
    assert [a["target"] for a in decision["attempts"]] == [
        "acme/gpt-4o-mini",
        "acme/gpt-4o-mini",
        "backup/backup-model",
    ]
    assert [a["status"] for a in decision["attempts"]] == [500, 502, "ok"]
    (row,) = wait_rows(gateway.database_url, request_id=request_id)
    assert row["provider"] == "backup"
    assert row["served_model"] == "backup-model"
    assert row["status"] == "success"


def test_a_request_the_upstream_refuses_is_not_retried(
    http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["acme"].enqueue(status(400))
    response = chat(http, "gpt-4o-mini")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "acme/gpt-4o-mini" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fakes["acme"].count(UPSTREAM_CHAT) == 1
    assert fakes["backup"].count() == 0


def test_when_every_target_fails_the_error_names_them(
    http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["acme"].set_default(status(500))
    fakes["backup"].set_default(status(503))
    try:
        response = chat(http, "gpt-4o-mini")
    finally:
        fakes["acme"].set_default(ok())
        fakes["backup"].set_default(ok())
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert "backup/backup-model" in error["message"]
    assert "2 targets" in error["message"]


def test_an_unreachable_provider_falls_back(
    http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["acme"].down()
    response = chat(http, "gpt-4o-mini")
    assert response.status_code == 200
    assert response.headers["x-helixflow-target"] == "backup/backup-model"


def test_a_stream_that_breaks_before_any_token_falls_back_without_duplicates(
    http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["acme"].enqueue(close_after(1), close_after(1))  # the role chunk only, twice
    response = chat(http, "gpt-4o-mini", stream=True)
    assert response.headers["x-helixflow-target"] == "backup/backup-model"
    payloads = sse_payloads(response)
    assert streamed_text(payloads) == "Hello from backup."
    assert payloads[-1] == "[DONE]"


def test_a_stream_that_breaks_after_tokens_is_not_retried(
    http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["acme"].enqueue(close_after(3))  # role, "Hello", " from"
    response = chat(http, "gpt-4o-mini", stream=True)
    payloads = sse_payloads(response)
    assert streamed_text(payloads) == "Hello from"
    assert "[DONE]" not in payloads
    assert payloads[-1]["error"]["type"] == "upstream_error"
    assert fakes["acme"].count(UPSTREAM_CHAT) == 1
    assert fakes["backup"].count() == 0


def test_a_slow_provider_times_out_into_the_fallback(
    gateway: ServerProcess, http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["slowpoke"].set_default(delay(2.0))
    try:
        response = chat(http, "slow-model")
    finally:
        fakes["slowpoke"].set_default(ok())
    assert response.status_code == 200
    assert response.headers["x-helixflow-target"] == "backup/backup-model"
    (decision,) = wait_rows(
        gateway.database_url,
        table_name="routing_decisions",
        request_id=response.headers["x-request-id"],
    )
    assert [a.get("error") for a in decision["attempts"][:2]] == ["upstream_timeout"] * 2


def test_a_client_giving_up_on_a_hanging_provider_frees_it(
    http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["acme"].enqueue(hang())
    with pytest.raises(httpx.ReadTimeout):
        http.post(CHAT, json={"model": "gpt-4o-mini", "messages": MESSAGES}, timeout=0.5)
    fakes["acme"].reset()
    deadline = time.monotonic() + 10
    while targets(http)["acme/gpt-4o-mini"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    state = targets(http)["acme/gpt-4o-mini"]
    assert state["in_flight"] == 0
    assert state["circuit"] == "closed"
    assert chat(http, "gpt-4o-mini").status_code == 200


def test_a_busy_local_model_falls_back_to_a_provider(http: httpx.Client) -> None:
    hold = {
        "model": "one-slot",
        "messages": MESSAGES,
        "max_tokens": 1500,
        "ignore_eos": True,  # holds the only slot until the stream is closed
        "stream": True,
    }
    with http.stream("POST", CHAT, json=hold) as holding:
        assert holding.headers["x-helixflow-target"] == "local/one-slot"
        lines = holding.iter_lines()
        next(lines)  # the slot is taken while this stream is open
        response = chat(http, "one-slot")
        assert response.status_code == 200
        assert response.headers["x-helixflow-target"] == "backup/backup-model"
        assert response.json()["choices"][0]["message"]["content"] == "Hello from backup."


def test_upstream_requests_are_recorded_with_their_cost(
    gateway: ServerProcess, http: httpx.Client
) -> None:
    response = chat(http, "gpt-4o-mini", user="carol")
    usage = response.json()["usage"]
    (row,) = wait_rows(gateway.database_url, request_id=response.headers["x-request-id"])
    assert row["provider"] == "acme"
    assert row["served_model"] == "gpt-4o-mini"
    assert row["prompt_tokens"] == usage["prompt_tokens"]
    assert row["completion_tokens"] == usage["completion_tokens"] == 4
    expected = (usage["prompt_tokens"] * 150 + usage["completion_tokens"] * 600) / 1e6
    assert row["cost_usd"] == pytest.approx(expected)
    streamed = chat(http, "gpt-4o-mini", stream=True)
    (row,) = wait_rows(gateway.database_url, request_id=streamed.headers["x-request-id"])
    assert row["streamed"] is True
    assert row["completion_tokens"] == 4
    assert row["ttft_ms"] is not None
    assert row["ttft_ms"] <= row["latency_ms"]


def test_an_agent_follows_its_assignment(http: httpx.Client) -> None:
    solved = http.post(
        "/api/v1/router/assign",
        json={
            "agents": [
                {"name": "coder", "capabilities": ["chat", "tools"]},
                {"name": "chatter", "capabilities": ["chat"]},
            ],
            "targets": ["acme/gpt-4o-mini", "backup/backup-model"],
            "capacity": {"acme/gpt-4o-mini": 1, "backup/backup-model": 1},
        },
    )
    assert solved.status_code == 200, solved.text
    placed = {a["agent"]: a["target"] for a in solved.json()["assignments"]}
    assert set(placed) == {"coder", "chatter"}
    assert set(placed.values()) == {"acme/gpt-4o-mini", "backup/backup-model"}
    for agent, target in placed.items():
        for _ in range(3):
            response = chat(http, "fast", headers={"X-Agent-Id": agent})
            assert response.headers["x-helixflow-target"] == target
            assert agent in response.headers["x-helixflow-route-reason"]
    listed = http.get("/api/v1/router/assignments").json()["data"]
    assert {a["agent"]: a["target"] for a in listed} == placed


# --- circuit breaker -------------------------------------------------------------------------


def test_the_breaker_opens_then_half_opens_then_closes(
    http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    flaky = fakes["flaky"]
    flaky.set_default(status(500))
    for _ in range(2):  # 2 attempts each: 4 failures >= threshold 3
        assert chat(http, "flaky-model").headers["x-helixflow-target"] == "backup/backup-model"
    assert targets(http)["flaky/flaky-model"]["circuit"] == "open"
    sent = flaky.count(UPSTREAM_CHAT)
    assert sent == 3  # the third failure opened it: no fourth attempt
    response = chat(http, "flaky-model")
    assert response.headers["x-helixflow-target"] == "backup/backup-model"
    assert flaky.count(UPSTREAM_CHAT) == sent  # open: not even tried
    flaky.set_default(ok())
    time.sleep(OPEN_S + 0.2)
    assert targets(http)["flaky/flaky-model"]["circuit"] == "half_open"
    response = chat(http, "flaky-model")
    assert response.headers["x-helixflow-target"] == "flaky/flaky-model"
    assert targets(http)["flaky/flaky-model"]["circuit"] == "closed"


# --- choosing --------------------------------------------------------------------------------


def test_a_group_spreads_requests_and_sessions_stick(http: httpx.Client) -> None:
    seen = {chat(http, "fast").headers["x-helixflow-target"] for _ in range(4)}
    assert seen == {"acme/gpt-4o-mini", "backup/backup-model"}
    first = chat(http, "fast", headers={"X-Session-Id": "conv-1"})
    for _ in range(4):
        again = chat(http, "fast", headers={"X-Session-Id": "conv-1"})
        assert again.headers["x-helixflow-target"] == first.headers["x-helixflow-target"]
        assert "affinity" in again.headers["x-helixflow-route-reason"]


def test_capabilities_and_context_filter_the_candidates(http: httpx.Client) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    for _ in range(3):
        response = chat(http, "toolful", tools=tools)
        assert response.headers["x-helixflow-target"] == "acme/gpt-4o-mini"
    long_prompt = [{"role": "user", "content": "word " * 400}]
    response = http.post(CHAT, json={"model": "toolful", "messages": long_prompt})
    assert response.headers["x-helixflow-target"] == "acme/gpt-4o-mini"


def test_no_capable_target_is_a_clear_400(http: httpx.Client) -> None:
    response = chat(http, "tiny-model", response_format={"type": "json_object"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "no_capable_model"
    assert error["param"] == "model"
    assert "lacks json" in error["message"]


def test_groups_can_serve_local_models(http: httpx.Client) -> None:
    response = chat(http, "auto", max_tokens=4, headers={"X-Session-Id": "local-check"})
    assert response.status_code == 200
    assert response.headers["x-helixflow-target"]


def test_models_lists_local_upstream_and_groups(http: httpx.Client) -> None:
    cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
    assert {"smollm2-135m", "gpt-4o-mini", "acme/gpt-4o-mini", "fast", "auto"} <= set(cards)
    assert cards["fast"]["kind"] == "group"
    assert cards["fast"]["targets"] == ["acme/gpt-4o-mini", "backup/backup-model"]
    assert cards["acme/gpt-4o-mini"]["owned_by"] == "acme"
    assert http.get("/v1/models/tiny-model").json()["context_window"] == 64
    missing = http.get("/v1/models/nope")
    assert missing.status_code == 404


# --- cache -----------------------------------------------------------------------------------


def test_a_deterministic_request_is_answered_from_the_cache(
    http: httpx.Client, fakes: dict[str, FakeUpstream]
) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0, "max_tokens": 9}
    first = http.post(CHAT, json=body)
    second = http.post(CHAT, json={**body, "user": "someone-else"})
    assert first.status_code == second.status_code == 200
    assert second.headers["x-helixflow-cache"] == "hit"
    assert second.content == first.content
    assert fakes["acme"].count(UPSTREAM_CHAT) == 1
    streamed = http.post(CHAT, json={**body, "stream": True})
    assert streamed.headers["x-helixflow-cache"] == "hit"
    payloads = sse_payloads(streamed)
    assert streamed_text(payloads) == first.json()["choices"][0]["message"]["content"]
    assert payloads[-1] == "[DONE]"
    bypass = http.post(CHAT, json=body, headers={"Cache-Control": "no-cache"})
    assert "x-helixflow-cache" not in bypass.headers
    assert fakes["acme"].count(UPSTREAM_CHAT) == 2


def test_a_random_request_is_not_cached(http: httpx.Client, fakes: dict[str, FakeUpstream]) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.7}
    http.post(CHAT, json=body)
    second = http.post(CHAT, json=body)
    assert "x-helixflow-cache" not in second.headers
    assert fakes["acme"].count(UPSTREAM_CHAT) == 2


# --- feedback and bad input ------------------------------------------------------------------


def test_feedback_reaches_the_router(http: httpx.Client) -> None:
    response = chat(http, "fast")
    request_id = response.headers["x-request-id"]
    accepted = http.post("/api/v1/router/feedback", json={"request_id": request_id, "score": 1})
    assert accepted.status_code == 200
    assert accepted.json()["target"] == response.headers["x-helixflow-target"]


@pytest.mark.parametrize(
    ("body", "status_code", "param"),
    [
        ({"request_id": "nope", "score": 0.5}, 404, "request_id"),
        ({"request_id": "x", "score": 2}, 400, "score"),
        ({"request_id": "", "score": 0.5}, 400, "request_id"),
        ({"score": 0.5}, 400, "request_id"),
    ],
)
def test_bad_feedback_is_refused(
    http: httpx.Client, body: dict[str, Any], status_code: int, param: str
) -> None:
    response = http.post("/api/v1/router/feedback", json=body)
    assert response.status_code == status_code
    assert response.json()["error"]["param"] == param


def test_an_overlong_category_header_is_refused(http: httpx.Client) -> None:
    response = chat(http, "fast", headers={"X-HelixFlow-Category": "x" * 65})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-helixflow-category"


def test_an_operator_can_drain_a_target(http: httpx.Client, fakes: dict[str, FakeUpstream]) -> None:
    drained = http.post("/api/v1/router/targets/acme/gpt-4o-mini/circuit", json={"state": "open"})
    assert drained.json()["circuit"] == "open"
    assert chat(http, "gpt-4o-mini").headers["x-helixflow-target"] == "backup/backup-model"
    assert fakes["acme"].count() == 0
    bad = http.post("/api/v1/router/targets/acme/gpt-4o-mini/circuit", json={"state": "shut"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "state"
    unknown = http.post("/api/v1/router/targets/acme/nope/circuit", json={"state": "open"})
    assert unknown.status_code == 404


def test_the_router_state_is_visible(http: httpx.Client) -> None:
    groups = {g["name"]: g for g in http.get("/api/v1/router/groups").json()["data"]}
    assert groups["fast"]["strategy"] == "round_robin"
    state = targets(http)
    assert state["acme/gpt-4o-mini"]["input_price_per_mtok"] == 150.0
    assert state["local/smollm2-135m"]["kind"] == "local"
    alerts = http.get("/api/v1/router/alerts", params={"window": "1h"})
    assert alerts.status_code == 200
    assert isinstance(alerts.json()["alerts"], list)


def test_an_unknown_model_is_404(http: httpx.Client) -> None:
    response = chat(http, "acme/unknown")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
