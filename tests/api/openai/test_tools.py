"""Function calling through the official client, against the real server on both bundled
models. Forced calls (``required``, a named function) are grammar-constrained, so their
arguments always parse and validate; temperature 0 keeps every reply stable."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from tests.conftest import CHAT_MODELS

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 32}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the local time in a timezone",
            "parameters": TIME_PARAMETERS,
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What's the weather like in Paris?"}]


@pytest.fixture(params=CHAT_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def check_calls(calls: list[Any] | None, allowed: set[str]) -> list[Any]:
    """Each call is well-formed and its arguments validate against its function's schema."""
    assert calls, "expected tool calls"
    ids = set()
    for call in calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        ids.add(call.id)
        assert call.function.name in allowed
        arguments = json.loads(call.function.arguments)
        Draft202012Validator(SCHEMAS[call.function.name]).validate(arguments)
    assert len(ids) == len(calls)
    return calls


def test_named_function_call_validates(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=100,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = check_calls(choice.message.tool_calls, {"get_time"})
    assert len(calls) == 1


def test_required_with_several_tools(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        temperature=0,
        max_tokens=500,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = check_calls(choice.message.tool_calls, {"get_weather", "get_time"})
    assert 1 <= len(calls) <= 8  # forced calls are capped (a small model may repeat them)


def test_parallel_tool_calls_false_makes_one_call(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=100,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(check_calls(choice.message.tool_calls, {"get_weather", "get_time"})) == 1


class GetWeather(BaseModel):
    city: str = Field(max_length=24)
    days: int = Field(ge=1, le=7)


def test_streamed_calls_assemble_with_the_official_client(
    client: openai.OpenAI, model: str
) -> None:
    """``client.chat.completions.stream`` accumulates the deltas and parses the arguments
    into the tool's pydantic model; the result equals the non-streamed reply."""
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    fields: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Weather in Paris for the next 3 days?"}],
        "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0,
        "max_tokens": 100,
    }
    with client.chat.completions.stream(**fields) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert len(choice.message.tool_calls) == 1
    streamed = choice.message.tool_calls[0]
    assert streamed.id.startswith("call_")
    assert isinstance(streamed.function.parsed_arguments, GetWeather)
    whole = client.chat.completions.create(**fields).choices[0].message.tool_calls
    assert whole is not None
    assert whole[0].function.name == streamed.function.name
    assert whole[0].function.arguments == streamed.function.arguments


def test_streamed_call_deltas_have_openai_shape(base_url: str) -> None:
    body = {
        "model": "smollm2-135m",
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 100,
        "stream": True,
    }
    with (
        httpx.Client(base_url=base_url, timeout=120) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    choices = [json.loads(line)["choices"][0] for line in lines[:-1]]
    call_deltas = [c["delta"]["tool_calls"][0] for c in choices if c["delta"].get("tool_calls")]
    header, *fragments = call_deltas
    assert header["index"] == 0
    assert header["id"].startswith("call_")
    assert header["type"] == "function"
    assert header["function"]["name"] in SCHEMAS
    assert header["function"]["arguments"] == ""
    assert fragments
    assert all(set(f) == {"index", "function"} and f["index"] == 0 for f in fragments)
    arguments = "".join(f["function"]["arguments"] for f in fragments)
    Draft202012Validator(SCHEMAS[header["function"]["name"]]).validate(json.loads(arguments))
    assert choices[-1]["finish_reason"] == "tool_calls"


def test_deprecated_functions_are_answered_with_function_call(client: openai.OpenAI) -> None:
    functions = [t["function"] for t in TOOLS]
    reply = client.chat.completions.create(
        model="smollm2-135m",
        messages=ASK,  # type: ignore[arg-type]
        functions=functions,  # type: ignore[arg-type]
        function_call={"name": "get_weather"},
        temperature=0,
        max_tokens=100,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None
    call = choice.message.function_call
    assert call is not None
    assert call.name == "get_weather"
    Draft202012Validator(WEATHER_PARAMETERS).validate(json.loads(call.arguments))

    chunks = list(
        client.chat.completions.create(
            model="smollm2-135m",
            messages=ASK,  # type: ignore[arg-type]
            functions=functions,  # type: ignore[arg-type]
            function_call={"name": "get_weather"},
            temperature=0,
            max_tokens=100,
            stream=True,
        )
    )
    parts = [c.choices[0].delta.function_call for c in chunks if c.choices]
    name = "".join(p.name or "" for p in parts if p is not None)
    arguments = "".join(p.arguments or "" for p in parts if p is not None)
    assert (name, arguments) == (call.name, call.arguments)
    assert chunks[-1].choices[0].finish_reason == "function_call"


def test_conversation_with_a_tool_result_is_answered(client: openai.OpenAI, model: str) -> None:
    """Call, result, answer: the assistant's tool calls and the tool's result are rendered
    through the model's template and the model replies in text."""
    first = client.chat.completions.create(
        model=model,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=100,
    )
    assert first.choices[0].message.tool_calls
    call = first.choices[0].message.tool_calls[0]
    messages: list[dict[str, Any]] = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    reply = client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        temperature=0,
        max_tokens=30,
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.tool_calls is None
    assert choice.message.content
    baseline = client.chat.completions.create(
        model=model,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        max_tokens=1,
    )
    assert reply.usage is not None
    assert baseline.usage is not None
    assert reply.usage.prompt_tokens > baseline.usage.prompt_tokens + 10  # call and result


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2-135m",
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        temperature=0,
        max_tokens=12,
    )
    choice = reply.choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_auto_gives_text_or_valid_calls(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=40,
    )
    choice = reply.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason in ("tool_calls", "length")
        for call in choice.message.tool_calls:
            assert call.function.name in SCHEMAS
            json.loads(call.function.arguments)
    else:
        assert choice.finish_reason in ("stop", "length")
        assert choice.message.content is not None


def test_every_choice_of_n_makes_its_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2-135m",
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        n=2,
        temperature=0.8,
        seed=5,
        max_tokens=100,
    )
    assert len(reply.choices) == 2
    ids = set()
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls"
        calls = check_calls(choice.message.tool_calls, {"get_weather"})
        ids.update(c.id for c in calls)
    assert len(ids) == 2
