"""Bad input of every kind gets a 4xx in OpenAI's error envelope, never a 500, and the server
stays healthy. Real HTTP against the real server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import QUEUE_MODEL, SMALL_KV_MODEL, wait_idle

MODEL = "smollm2-135m"
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "Say hi."}]
ANY = "<any>"
"""As an expected ``param`` or ``code``: not checked."""


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, **fields}


def assert_error(
    response: httpx.Response,
    status: int,
    *,
    param: str | None = ANY,
    code: str | None = ANY,
    mentions: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check the status and that the body is exactly the envelope; return the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["type"], str), error
    assert error["type"], error
    assert isinstance(error["message"], str), error
    assert len(error["message"]) >= 15, error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    if param != ANY:
        assert error["param"] == param, error
    if code != ANY:
        assert error["code"] == code, error
    for word in mentions:
        assert word.lower() in error["message"].lower(), (word, error)
    if status < 500:
        assert error["type"] != "server_error", error
    return error


def context_window(http: httpx.Client, model: str) -> int:
    card = http.get(f"/v1/models/{model}").json()
    window = card["context_window"]
    assert isinstance(window, int), card
    assert window > 0, card
    return window


# -- the body as a whole ------------------------------------------------------------------------
def test_malformed_json(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        content=b'{"model": "smollm2-135m", "mess',
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, param=None, code="invalid_json", mentions=("JSON",))


@pytest.mark.parametrize(
    "content",
    [b'{"model": "smollm2-135m", "mess', b'{"model": "smollm2-135m", "messages": []}'],
    ids=["malformed", "well-formed"],
)
def test_body_without_json_content_type(http: httpx.Client, content: bytes) -> None:
    response = http.post("/v1/chat/completions", content=content)
    assert "content-type" not in response.request.headers
    assert_error(
        response, 415, param=None, code="unsupported_media_type", mentions=("application/json",)
    )


def test_body_with_another_content_type(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        content=b'{"model": "smollm2-135m"}',
        headers={"Content-Type": "text/plain"},
    )
    assert_error(
        response,
        415,
        param=None,
        code="unsupported_media_type",
        mentions=("application/json", "text/plain"),
    )


def test_empty_body(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", content=b"", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, param=None, mentions=("body", "empty"))


@pytest.mark.parametrize(
    ("body", "kind"), [([chat()], "array"), ("hello", "string")], ids=["array", "string"]
)
def test_body_that_is_not_an_object(http: httpx.Client, body: Any, kind: str) -> None:
    response = http.post("/v1/chat/completions", json=body)
    assert_error(response, 400, param=None, mentions=("JSON object", kind))


# -- chat: one field wrong ----------------------------------------------------------------------
@dataclass(frozen=True)
class Bad:
    id: str
    body: dict[str, Any]
    param: str | None
    mentions: tuple[str, ...] = ()
    code: str | None = ANY
    status: int = 400


def _without(key: str) -> dict[str, Any]:
    body = chat()
    del body[key]
    return body


def tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


TOOLS = [
    tool(
        "get_weather",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
]


CHAT_CASES = [
    Bad("missing-model", _without("model"), "model", ("model",), "missing"),
    Bad("missing-messages", _without("messages"), "messages", ("messages",), "missing"),
    Bad("empty-messages", chat(messages=[]), "messages", ("messages",)),
    Bad("temperature-string", chat(temperature="hot"), "temperature", ("temperature",)),
    Bad("max-tokens-string", chat(max_tokens="ten"), "max_tokens", ("max_tokens",)),
    Bad("messages-string", chat(messages="hi"), "messages", ("messages",)),
    Bad(
        "message-without-role",
        chat(messages=[{"content": "hi"}]),
        "messages[0].role",
        ("role",),
        "missing",
    ),
    Bad(
        "unknown-role",
        chat(messages=[{"role": "wizard", "content": "hi"}]),
        "messages[0].role",
        ("role", "user"),
    ),
    Bad(
        "content-number",
        chat(messages=[{"role": "user", "content": 5}]),
        "messages[0].content",
        ("content",),
    ),
    Bad("temperature-3", chat(temperature=3), "temperature", ("temperature", "2")),
    Bad("top-p-0", chat(top_p=0), "top_p", ("top_p",)),
    Bad("top-p-1.5", chat(top_p=1.5), "top_p", ("top_p", "1")),
    Bad("max-tokens-0", chat(max_tokens=0), "max_tokens", ("max_tokens",)),
    Bad("max-tokens-negative", chat(max_tokens=-1), "max_tokens", ("max_tokens",)),
    Bad(
        "max-completion-tokens-0",
        chat(max_completion_tokens=0),
        "max_completion_tokens",
        ("max_completion_tokens",),
    ),
    Bad("n-0", chat(n=0), "n", ("'n'",)),
    Bad("n-1000", chat(n=1000), "n", ("'n'",)),
    Bad(
        "top-logprobs-21",
        chat(logprobs=True, top_logprobs=21),
        "top_logprobs",
        ("top_logprobs", "20"),
    ),
    Bad(
        "top-logprobs-without-logprobs",
        chat(top_logprobs=2),
        "top_logprobs",
        ("top_logprobs", "logprobs"),
    ),
    Bad(
        "frequency-penalty-3",
        chat(frequency_penalty=3),
        "frequency_penalty",
        ("frequency_penalty",),
    ),
    Bad("logit-bias-200", chat(logit_bias={"5": 200}), "logit_bias", ("logit_bias", "100")),
    Bad("logit-bias-key-abc", chat(logit_bias={"abc": 1}), "logit_bias", ("logit_bias", "abc")),
    Bad("logit-bias-key-huge", chat(logit_bias={"9" * 5000: 1}), "logit_bias", ("logit_bias",)),
    Bad(
        "logit-bias-outside-vocabulary",
        chat(logit_bias={"99999999": 1}),
        "logit_bias",
        ("99999999", "vocabulary"),
        "invalid_logit_bias",
    ),
    Bad(
        "logit-bias-negative-token",
        chat(logit_bias={"-5": 1}),
        "logit_bias",
        ("-5", "vocabulary"),
        "invalid_logit_bias",
    ),
    Bad("17-stop-sequences", chat(stop=[f"stop{i}" for i in range(17)]), "stop", ("stop", "16")),
    Bad("empty-stop", chat(stop=""), "stop", ("stop", "empty")),
    Bad("empty-stop-in-list", chat(stop=["end", ""]), "stop", ("stop", "empty")),
    Bad(
        "stream-options-without-stream",
        chat(stream_options={"include_usage": True}),
        "stream_options",
        ("stream_options", "stream"),
    ),
    Bad("unknown-model", chat(model="nope"), "model", ("nope",), "model_not_found", 404),
    Bad(
        "image-part",
        chat(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                }
            ]
        ),
        "messages[0].content",
        ("image_url",),
        "unsupported_content",
    ),
    Bad("response-format-xml", chat(response_format={"type": "xml"}), "response_format.type"),
    Bad(
        "json-schema-missing",
        chat(response_format={"type": "json_schema"}),
        "response_format.json_schema",
        ("json_schema",),
    ),
    Bad(
        "json-schema-without-name",
        chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "response_format.json_schema.name",
        ("name",),
        "missing",
    ),
    Bad(
        "json-schema-invalid",
        chat(response_format=json_schema({"type": "object", "properties": {"a": {"type": 5}}})),
        "response_format.json_schema.schema",
        ("schema", "/properties/a/type"),
        "invalid_schema",
    ),
    Bad(
        "json-schema-pattern",
        chat(response_format=json_schema({"type": "string", "pattern": "^[a-z]+$"})),
        "response_format.json_schema.schema",
        ("pattern",),
        "unsupported_schema_feature",
    ),
    Bad(
        "json-schema-multiple-of-nested",
        chat(
            response_format=json_schema(
                {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}}
            )
        ),
        "response_format.json_schema.schema",
        ("multipleOf", "/properties/n"),
        "unsupported_schema_feature",
    ),
    Bad(
        "tool-choice-required-without-tools",
        chat(tool_choice="required"),
        "tool_choice",
        ("tool_choice", "tools"),
    ),
    Bad("tool-choice-unknown-value", chat(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
    Bad(
        "tool-choice-unknown-function",
        chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "launch"}}),
        "tool_choice",
        ("launch", "get_weather"),
        "unknown_function",
    ),
    Bad(
        "tool-parameters-invalid-schema",
        chat(tools=[tool("f", {"type": "object", "required": "city"})]),
        "tools[0].function.parameters",
        ("tools[0].function.parameters",),
        "invalid_schema",
    ),
    Bad(
        "tool-parameters-unsupported-when-forced",
        chat(
            tools=[*TOOLS, tool("g", {"type": "object", "not": {"required": ["x"]}})],
            tool_choice="required",
        ),
        "tools[1].function.parameters",
        ("`not`",),
        "unsupported_schema_feature",
    ),
    Bad(
        "tool-function-name-with-spaces",
        chat(tools=[tool("get weather", {"type": "object"})]),
        "tools[0].function.name",
        ("name",),
    ),
    Bad(
        "duplicate-function-names",
        chat(tools=[*TOOLS, *TOOLS]),
        "tools[1].function.name",
        ("get_weather",),
        "duplicate_function_name",
    ),
    Bad(
        "tools-and-functions",
        chat(tools=TOOLS, functions=[TOOLS[0]["function"]]),
        "functions",
        ("functions", "tools"),
    ),
    Bad(
        "function-call-unknown-function",
        chat(functions=[TOOLS[0]["function"]], function_call={"name": "launch"}),
        "function_call",
        ("launch",),
        "unknown_function",
    ),
    Bad(
        "tool-message-without-id",
        chat(messages=[{"role": "tool", "content": "42"}]),
        "messages[0].tool_call_id",
        ("tool_call_id",),
    ),
    Bad(
        "tool-message-answering-no-call",
        chat(
            messages=[
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
            ]
        ),
        "messages[3].tool_call_id",
        ("call_2",),
        "unknown_tool_call_id",
    ),
    Bad(
        "function-message-without-name",
        chat(messages=[{"role": "function", "content": "42"}]),
        "messages[0].name",
        ("name",),
    ),
    Bad("n-above-parallel-slots", chat(model=QUEUE_MODEL, n=2), "n", ("n=2", "1"), "n_too_large"),
]


@pytest.mark.parametrize("case", CHAT_CASES, ids=[c.id for c in CHAT_CASES])
def test_bad_chat_request(http: httpx.Client, case: Bad) -> None:
    response = http.post("/v1/chat/completions", json=case.body)
    assert_error(response, case.status, param=case.param, code=case.code, mentions=case.mentions)


def test_lone_surrogate_in_content(http: httpx.Client) -> None:
    """JSON can spell a lone UTF-16 surrogate; no tokenizer can encode it."""
    raw = (
        b'{"model": "smollm2-135m", "max_tokens": 4, '
        b'"messages": [{"role": "user", "content": "a\\ud800b"}]}'
    )
    response = http.post(
        "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, param="messages[0].content", mentions=("unicode",))


def test_lone_surrogate_in_stop(http: httpx.Client) -> None:
    raw = (
        b'{"model": "smollm2-135m", "max_tokens": 4, "stop": ["ok", "\\udc00"], '
        b'"messages": [{"role": "user", "content": "hi"}]}'
    )
    response = http.post(
        "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, param="stop[1]", mentions=("unicode",))


# -- context length -----------------------------------------------------------------------------
def test_prompt_longer_than_the_context(http: httpx.Client) -> None:
    window = context_window(http, SMALL_KV_MODEL)
    body = chat(
        model=SMALL_KV_MODEL, messages=[{"role": "user", "content": "word " * (2 * window)}]
    )
    error = assert_error(
        http.post("/v1/chat/completions", json=body),
        400,
        param="messages",
        code="context_length_exceeded",
        mentions=(f"{window} tokens",),
    )
    counts = [int(n) for n in re.findall(r"\d+", error["message"])]
    assert any(n > window for n in counts), error  # the prompt's own token count


def test_max_tokens_that_cannot_fit(http: httpx.Client) -> None:
    window = context_window(http, SMALL_KV_MODEL)
    body = chat(model=SMALL_KV_MODEL, max_tokens=window)
    assert_error(
        http.post("/v1/chat/completions", json=body),
        400,
        param="max_tokens",
        code="context_length_exceeded",
        mentions=(f"{window} tokens", str(window)),
    )


def test_completion_prompt_longer_than_the_context(http: httpx.Client) -> None:
    window = context_window(http, SMALL_KV_MODEL)
    body = completion(model=SMALL_KV_MODEL, prompt="word " * (2 * window))
    error = assert_error(
        http.post("/v1/completions", json=body),
        400,
        param="prompt",
        code="context_length_exceeded",
        mentions=(f"{window} tokens",),
    )
    counts = [int(n) for n in re.findall(r"\d+", error["message"])]
    assert any(n > window for n in counts), error


# -- legacy completions -------------------------------------------------------------------------
COMPLETION_CASES = [
    Bad("empty-prompt-list", completion(prompt=[]), "prompt", ("prompt", "empty")),
    Bad("empty-token-array", completion(prompt=[[]]), "prompt", ("empty",)),
    Bad("empty-prompt-string", completion(prompt=""), "prompt", ("empty",)),
    Bad(
        "token-outside-vocabulary",
        completion(prompt=[1, 99999999]),
        "prompt",
        ("99999999", "vocabulary"),
        "invalid_token",
    ),
    Bad("negative-token", completion(prompt=[[1, -3]]), "prompt", ("-3",), "invalid_token"),
    Bad("prompt-of-floats", completion(prompt=[1.5]), "prompt", ("prompt",)),
    Bad("suffix", completion(suffix="The end."), "suffix", ("suffix",)),
    Bad("best-of-not-n", completion(best_of=2), "best_of", ("best_of",)),
    Bad("logprobs-21", completion(logprobs=21), "logprobs", ("logprobs", "20")),
    Bad("missing-prompt", {"model": MODEL}, "prompt", ("prompt",), "missing"),
    Bad("too-many-prompts", completion(prompt=["a"] * 65), "prompt", ("64",)),
    Bad("n-above-parallel-slots", completion(model=QUEUE_MODEL, n=2), "n", ("n=2",), "n_too_large"),
    Bad(
        "logit-bias-outside-vocabulary",
        completion(logit_bias={"99999999": 1}),
        "logit_bias",
        ("vocabulary",),
        "invalid_logit_bias",
    ),
    Bad("unknown-model", completion(model="nope"), "model", ("nope",), "model_not_found", 404),
]


@pytest.mark.parametrize("case", COMPLETION_CASES, ids=[c.id for c in COMPLETION_CASES])
def test_bad_completion_request(http: httpx.Client, case: Bad) -> None:
    response = http.post("/v1/completions", json=case.body)
    assert_error(response, case.status, param=case.param, code=case.code, mentions=case.mentions)


def test_lone_surrogate_in_prompt(http: httpx.Client) -> None:
    raw = b'{"model": "smollm2-135m", "max_tokens": 4, "prompt": ["fine", "x\\ud83d"]}'
    response = http.post(
        "/v1/completions", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, param="prompt[1]", mentions=("unicode",))


# -- streaming requests get a plain JSON error, not a 200 event stream --------------------------
STREAM_CASES = [
    ("/v1/chat/completions", chat(temperature=3), 400, "temperature"),
    ("/v1/chat/completions", chat(model="nope"), 404, "model"),
    ("/v1/chat/completions", chat(model=QUEUE_MODEL, n=2), 400, "n"),
    ("/v1/chat/completions", chat(logit_bias={"99999999": 1}), 400, "logit_bias"),
    (
        "/v1/chat/completions",
        chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
        400,
        "tool_choice",
    ),
    (
        "/v1/chat/completions",
        chat(response_format=json_schema({"type": "string", "pattern": "a"})),
        400,
        "response_format.json_schema.schema",
    ),
    ("/v1/chat/completions", chat(model=SMALL_KV_MODEL, max_tokens=100_000), 400, "max_tokens"),
    (
        "/v1/chat/completions",
        chat(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                    ],
                }
            ]
        ),
        400,
        "messages[0].content",
    ),
    ("/v1/completions", completion(logprobs=21), 400, "logprobs"),
    ("/v1/completions", completion(model="nope"), 404, "model"),
    ("/v1/completions", completion(prompt=[1, 99999999]), 400, "prompt"),
    ("/v1/completions", completion(model=SMALL_KV_MODEL, max_tokens=100_000), 400, "max_tokens"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    STREAM_CASES,
    ids=[f"{p.rsplit('/', 1)[-1]}-{q}-{i}" for i, (p, _, _, q) in enumerate(STREAM_CASES)],
)
def test_streaming_request_with_bad_input_gets_json_error(
    base_url: str, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    with (
        httpx.Client(base_url=base_url, timeout=60) as own,
        own.stream("POST", path, json={**body, "stream": True}) as response,
    ):
        response.read()
        assert not response.headers["content-type"].startswith("text/event-stream")
        assert_error(response, status, param=param)


# -- models and routes --------------------------------------------------------------------------
def test_unknown_model_card(http: httpx.Client) -> None:
    assert_error(
        http.get("/v1/models/nope"), 404, param="model", code="model_not_found", mentions=("nope",)
    )


def test_unknown_url(http: httpx.Client) -> None:
    assert_error(
        http.post("/v1/nope", json=chat()),
        404,
        param=None,
        code="not_found",
        mentions=("/v1/nope",),
    )
    assert_error(http.get("/nope"), 404, param=None, code="not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("GET", "/v1/completions", "POST"),
        ("DELETE", "/v1/models", "GET"),
        ("POST", "/health", "GET"),
    ],
)
def test_wrong_method(http: httpx.Client, method: str, path: str, allowed: str) -> None:
    response = http.request(method, path)
    assert_error(response, 405, param=None, code="method_not_allowed", mentions=(method, path))
    assert allowed in response.headers["allow"]


# -- body size ----------------------------------------------------------------------------------
OVERSIZED = 300 * 1024  # the test server's limit is 256 KiB


def test_oversized_body(http: httpx.Client) -> None:
    body = chat(messages=[{"role": "user", "content": "x" * OVERSIZED}])
    response = http.post("/v1/chat/completions", json=body)
    assert int(response.request.headers["content-length"]) > OVERSIZED
    assert_error(response, 413, param=None, code="request_too_large", mentions=(str(256 * 1024),))


def test_oversized_chunked_body(base_url: str) -> None:
    """No Content-Length: the limit holds while the body streams in."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "'
        for _ in range(OVERSIZED // 1024):
            yield b"x" * 1024
        yield b'"}]}'

    with httpx.Client(base_url=base_url, timeout=60) as own:
        response = own.post(
            "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, param=None, code="request_too_large", mentions=(str(256 * 1024),))


def test_small_chunked_body_is_served(base_url: str) -> None:
    """The size check reads a chunked body itself; the endpoint must still get all of it."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "smollm2-135m", "max_tokens": 2, '
        yield b'"messages": [{"role": "user", "content": "Say hi."}]}'

    with httpx.Client(base_url=base_url, timeout=60) as own:
        response = own.post(
            "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


# -- capacity -----------------------------------------------------------------------------------
def test_queue_full_is_429_with_retry_after(base_url: str, http: httpx.Client) -> None:
    long_body = chat(
        model=QUEUE_MODEL,
        max_tokens=4000,  # outlasts the test on any CPU; closing the stream ends it
        temperature=0,
        ignore_eos=True,
        stream=True,
        messages=[{"role": "user", "content": "Count to a thousand."}],
    )
    try:
        with (
            httpx.Client(base_url=base_url, timeout=60) as own,
            own.stream("POST", "/v1/chat/completions", json=long_body) as first,
        ):
            assert first.status_code == 200
            # Hold the iterator: a dropped one is closed, and closing it closes the response.
            events = first.iter_lines()
            for line in events:
                if line.startswith("data:") and '"content":""' not in line:
                    break  # the first generated token: the only slot is taken
            blocked = [
                http.post("/v1/chat/completions", json=chat(model=QUEUE_MODEL)),
                http.post("/v1/chat/completions", json=chat(model=QUEUE_MODEL, stream=True)),
                http.post("/v1/completions", json=completion(model=QUEUE_MODEL)),
            ]
            for response in blocked:
                error = assert_error(
                    response, 429, param=None, code="queue_full", mentions=(QUEUE_MODEL,)
                )
                assert error["type"] == "rate_limit_error"
                assert int(response.headers["retry-after"]) >= 1
    finally:
        wait_idle(http, QUEUE_MODEL)
    again = http.post("/v1/chat/completions", json=chat(model=QUEUE_MODEL, max_tokens=2))
    assert again.status_code == 200, again.text


# -- after all of the above ---------------------------------------------------------------------
def test_server_stayed_healthy(http: httpx.Client) -> None:
    health = http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    ready = http.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    reply = http.post("/v1/chat/completions", json=chat(max_tokens=8, temperature=0))
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"]
    legacy = http.post("/v1/completions", json=completion(max_tokens=4, temperature=0))
    assert legacy.status_code == 200, legacy.text
    assert legacy.json()["choices"][0]["text"]
