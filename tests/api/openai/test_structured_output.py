"""Structured output (``response_format``) through the official client: replies always parse,
and validate against the schema, on both bundled models. Temperature 0 keeps them stable."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from tests.conftest import CHAT_MODELS

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email_verified": {"type": "boolean"},
    },
    "required": ["name", "age", "email_verified"],
    "additionalProperties": False,
}
ORDER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 30}, "vip": {"type": "boolean"}},
            "required": ["name", "vip"],
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "maxLength": 12},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                },
                "required": ["sku", "quantity"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 3,
        },
        "status": {"enum": ["pending", "shipped", "delivered"]},
        "total": {"type": "number", "minimum": 0, "maximum": 10000},
    },
    "required": ["customer", "items", "status", "total"],
    "additionalProperties": False,
}
RATING: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 5},
        "keywords": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["sentiment", "score", "keywords"],
    "additionalProperties": False,
}
SCHEMA_CASES = [
    ("person", PERSON, "Invent a person and describe them.", True),
    ("order", ORDER, "Create an example order for a customer.", True),
    ("rating", RATING, "Rate this review: 'Great food, slow service.'", False),
]


@pytest.fixture(params=CHAT_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def json_schema(name: str, schema: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": strict},
    }


@pytest.mark.parametrize(
    ("name", "schema", "prompt", "strict"), SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES]
)
def test_json_schema_reply_validates(
    client: openai.OpenAI,
    model: str,
    name: str,
    schema: dict[str, Any],
    prompt: str,
    strict: bool,
) -> None:
    """Nested objects, bounded arrays, enums, required fields and bounded numbers; with
    ``strict: false`` the schema is enforced just the same."""
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        response_format=json_schema(name, schema, strict),  # type: ignore[arg-type]
        temperature=0,
        max_tokens=300,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content is not None
    Draft202012Validator(schema).validate(json.loads(choice.message.content))


def test_json_object_reply_parses(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=300,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content is not None
    assert isinstance(json.loads(choice.message.content), dict)


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=120)
    email_verified: bool


def test_parse_into_a_pydantic_model(client: openai.OpenAI, model: str) -> None:
    """The client's ``parse`` sends a strict schema made from the model and parses the reply."""
    reply = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Invent a person and describe them."}],
        response_format=Person,
        temperature=0,
        max_tokens=200,
    )
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Person)
    assert 0 <= parsed.age <= 120


def test_streamed_structured_reply_equals_the_whole_one(client: openai.OpenAI) -> None:
    fields: dict[str, Any] = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Rate this review: 'Great food, slow service.'"}],
        "response_format": json_schema("rating", RATING),
        "temperature": 0,
        "max_tokens": 200,
    }
    whole = client.chat.completions.create(**fields)
    chunks = list(client.chat.completions.create(**fields, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    Draft202012Validator(RATING).validate(json.loads(streamed))


def test_json_schema_with_tools_on_offer(client: openai.OpenAI) -> None:
    """With ``tool_choice`` auto, the reply is either content matching the schema or calls."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
            },
        },
    }
    reply = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Invent a person and describe them."}],
        response_format=json_schema("person", PERSON),  # type: ignore[arg-type]
        tools=[weather],  # type: ignore[list-item]
        temperature=0,
        max_tokens=300,
    )
    message = reply.choices[0].message
    if message.tool_calls:
        assert reply.choices[0].finish_reason == "tool_calls"
        assert json.loads(message.tool_calls[0].function.arguments)["city"]  # type: ignore[union-attr]
    else:
        assert reply.choices[0].finish_reason == "stop"
        assert message.content is not None
        Draft202012Validator(PERSON).validate(json.loads(message.content))


def test_a_reply_cut_by_max_tokens_is_length(client: openai.OpenAI) -> None:
    """The one case where a structured reply does not parse: ``max_tokens`` was reached."""
    reply = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Create an example order for a customer."}],
        response_format=json_schema("order", ORDER),  # type: ignore[arg-type]
        temperature=0,
        max_tokens=6,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content is not None
    assert choice.message.content.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice.message.content)


def test_text_format_is_free_text(http: httpx.Client) -> None:
    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    plain = http.post("/v1/chat/completions", json=body).json()
    text = http.post(
        "/v1/chat/completions", json={**body, "response_format": {"type": "text"}}
    ).json()
    assert text["choices"][0]["message"] == plain["choices"][0]["message"]
