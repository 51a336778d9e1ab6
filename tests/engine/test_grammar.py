"""JSON Schema -> GBNF, checked with llama.cpp's own grammar engine as the judge: every
document the grammar accepts validates against the schema, and compact valid documents are
accepted. What cannot be enforced is refused with the keyword and where it is."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from helixflow.engine.bundled import resolve_bundled
from helixflow.engine.grammar import (
    GrammarBuilder,
    UnsupportedSchemaError,
    json_object_grammar,
    schema_grammar,
)
from helixflow.engine.grammar_numbers import integer_range, number_range
from helixflow.engine.llamacpp.model import ContextOptions, LlamaModel
from helixflow.engine.llamacpp.sampling import Grammar, GrammarError, check_grammar


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    options = ContextOptions(context_size=256, parallel=1, batch_size=64, threads=1)
    loaded = LlamaModel(resolve_bundled("smollm2-135m"), options)
    yield loaded
    loaded.close()


def accepts(model: LlamaModel, grammar: str, text: str) -> bool:
    """Does llama.cpp's grammar accept ``text`` as a complete output?"""
    judge = Grammar(model, grammar)
    try:
        for token in model.tokenize(text, add_special=False, parse_special=False):
            if not judge.allows(token):
                return False
            judge.accept(token)
        return judge.allows(model.eos_id)
    finally:
        judge.close()


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


PERSON = {
    "$defs": {
        "Address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["street", "zip"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "address": {"$ref": "#/$defs/Address"},
        "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "born": {"type": "string", "format": "date"},
    },
    "required": ["name", "age", "role", "tags", "address", "nickname"],
    "additionalProperties": False,
}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["value", "children"],
        }
    },
    "$ref": "#/$defs/node",
}

# (schema, documents that validate, documents that do not)
CASES: list[tuple[str, dict[str, Any], list[Any], list[str]]] = [
    (
        "person",
        PERSON,
        [
            {
                "name": "Ada",
                "age": 36,
                "role": "admin",
                "tags": ["x", "y"],
                "address": {"street": "1 Main St", "zip": "0000"},
                "nickname": None,
            },
            {
                "name": "B",
                "age": 0,
                "role": "user",
                "tags": [],
                "address": {"street": "", "zip": "1"},
                "nickname": "bee",
                "score": 0.25,
                "born": "1990-12-31",
            },
        ],
        [
            '{"name":"Ada"}',
            '{"name":"","age":1,"role":"user","tags":[],"address":{"street":"","zip":""},'
            '"nickname":null}',
            '{"name":"A","age":131,"role":"user","tags":[],"address":{"street":"","zip":""},'
            '"nickname":null}',
            '{"name":"A","age":1,"role":"root","tags":[],"address":{"street":"","zip":""},'
            '"nickname":null}',
            '{"name":"A","age":1,"role":"user","tags":["a","b","c","d"],'
            '"address":{"street":"","zip":""},"nickname":null}',
            '{"name":"A","age":1,"role":"user","tags":[],"address":{"street":""},"nickname":null}',
            '{"name":"A","age":1,"role":"user","tags":[],"address":{"street":"","zip":""},'
            '"nickname":null,"score":1.5}',
        ],
    ),
    (
        "tree",
        TREE,
        [{"value": 1, "children": [{"value": -2, "children": []}]}],
        ['{"value":1}', '{"value":1,"children":[{"value":2}]}', '{"value":01,"children":[]}'],
    ),
    (
        "optional-properties",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}},
        },
        [{}, {"a": 1}, {"b": True}, {"a": 1, "b": False}],
        ['{"b":true,"a":1}', '{,"a":1}', '{"a":1,}', '{"c":1}'],
    ),
    (
        "array-bounds",
        {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3},
        [[1, 2], [1, 2, 3]],
        ["[]", "[1]", "[1,2,3,4]", '[1,"2"]'],
    ),
    (
        "tuple",
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}]},
        [["x", True]],
        ['[true,"x"]', '["x"]'],
    ),
    (
        "type-list",
        {"type": ["integer", "null"]},
        [None, 0, -17],
        ['"1"', "1.5", "true"],
    ),
    (
        "const-and-all-of",
        {
            "allOf": [
                {"type": "object", "properties": {"kind": {"const": "circle"}}},
                {"properties": {"r": {"type": "number", "exclusiveMinimum": 0}}},
            ],
            "required": ["kind", "r"],
        },
        [{"kind": "circle", "r": 2.5}, {"kind": "circle", "r": 0.001}],
        ['{"kind":"square","r":1}', '{"kind":"circle","r":0}', '{"kind":"circle","r":-1}'],
    ),
    (
        "one-of-tagged",
        {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer"}},
                    "required": ["kind", "lives"],
                },
                {
                    "type": "object",
                    "properties": {"kind": {"const": "dog"}, "good": {"type": "boolean"}},
                    "required": ["kind", "good"],
                },
            ]
        },
        [{"kind": "cat", "lives": 9}, {"kind": "dog", "good": True}],
        ['{"kind":"cat","good":true}', '{"kind":"cow","lives":1}'],
    ),
    (
        "one-of-types",
        {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
        ["x", 3, None],
        ["true", "1.5"],
    ),
    (
        "string-map",
        {"type": "object", "additionalProperties": {"type": "integer"}},
        [{}, {"x": 1, "y": 2}],
        ['{"x":"1"}'],
    ),
    (
        "formats",
        {
            "type": "object",
            "properties": {
                "at": {"type": "string", "format": "date-time"},
                "id": {"type": "string", "format": "uuid"},
            },
            "required": ["at", "id"],
        },
        [{"at": "2024-02-29T23:59:59.5+01:00", "id": "123e4567-e89b-12d3-a456-426614174000"}],
        ['{"at":"2024-13-01T00:00:00Z","id":"123e4567-e89b-12d3-a456-426614174000"}'],
    ),
]


@pytest.mark.parametrize(("name", "schema", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_grammar_accepts_exactly_valid_documents(
    model: LlamaModel, name: str, schema: dict[str, Any], good: list[Any], bad: list[str]
) -> None:
    grammar = schema_grammar(schema)
    validator = Draft202012Validator(schema)
    for document in good:
        assert validator.is_valid(document), document
        assert accepts(model, grammar, compact(document)), (name, document, grammar)
    for text in bad:
        assert not accepts(model, grammar, text), (name, text, grammar)


def test_optional_space_after_separators_but_no_newlines(model: LlamaModel) -> None:
    grammar = schema_grammar(PERSON)
    document = CASES[0][2][0]
    assert accepts(model, grammar, json.dumps(document))  # ", " and ": "
    assert not accepts(model, grammar, json.dumps(document, indent=2))


def test_json_object_grammar(model: LlamaModel) -> None:
    grammar = json_object_grammar()
    assert accepts(model, grammar, '{"a": [1, -2.5e3, {"b": null}], "c": "d\\n\\u00e9"}')
    assert accepts(model, grammar, "{}")
    assert not accepts(model, grammar, "[1]")
    assert not accepts(model, grammar, '{"a": "raw\nnewline"}')  # JSON forbids it
    assert not accepts(model, grammar, '{"a": 01}')


def test_integer_ranges_match_their_bounds(model: LlamaModel) -> None:
    rng = random.Random(7)
    bounds: list[tuple[int | None, int | None]] = [
        (None, None),
        (0, None),
        (None, 42),
        (-5, None),
        (1, 1),
        (-13, 7),
        (-1234, -99),
        (99, 1234),
    ]
    bounds += [tuple(sorted(rng.sample(range(-3000, 3000), 2))) for _ in range(6)]  # type: ignore[misc]
    for low, high in bounds:
        grammar = f"root ::= {integer_range(low, high)}\n"
        values = {-1, 0, 1, 9, 10, 99, 100, 101, 999, 1000}
        values |= {b + d for b in (low, high) if b is not None for d in (-1, 0, 1)}
        values |= {rng.randint(-5000, 5000) for _ in range(30)}
        for value in sorted(values):
            expected = (low is None or value >= low) and (high is None or value <= high)
            assert accepts(model, grammar, str(value)) == expected, (low, high, value)
        assert not accepts(model, grammar, "007")
        assert not accepts(model, grammar, "1.0")


def test_number_ranges_match_their_bounds(model: LlamaModel) -> None:
    texts = ["0", "0.0", "0.5", "1", "1.0", "1.5", "2", "2.0", "2.25", "3", "10"]
    texts += ["-" + t for t in texts if t not in ("0", "0.0")]
    cases: list[tuple[tuple[int, bool] | None, tuple[int, bool] | None]] = [
        ((0, False), None),
        ((0, True), None),
        ((0, False), (2, False)),
        ((0, True), (2, True)),
        ((-2, False), (2, True)),
        ((-2, True), (-1, False)),
        (None, (0, True)),
        ((1, False), (1, False)),
    ]
    for low, high in cases:
        grammar = f"root ::= {number_range(low, high)}\n"
        for text in texts:
            x = float(text)
            above = low is None or (x > low[0] if low[1] else x >= low[0])
            below = high is None or (x < high[0] if high[1] else x <= high[0])
            assert accepts(model, grammar, text) == (above and below), (low, high, text)


@pytest.mark.parametrize(
    ("schema", "feature", "pointer"),
    [
        ({"type": "string", "pattern": "^a+$"}, "pattern", ""),
        ({"type": "integer", "multipleOf": 3}, "multipleOf", ""),
        ({"properties": {"x": {"not": {"type": "string"}}}}, "not", "/properties/x"),
        ({"type": "number", "minimum": 0.5}, "minimum", ""),
        ({"type": "string", "format": "email"}, "format", ""),
        ({"type": "array", "uniqueItems": True}, "uniqueItems", ""),
        ({"type": "object", "minProperties": 1}, "minProperties", ""),
        ({"$ref": "https://example.com/s.json"}, "$ref", ""),
        ({"$ref": "#/$defs/missing"}, "$ref", ""),
        ({"items": {"if": {"type": "string"}, "then": {}}}, "if", "/items"),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"]},
            "required",
            "",
        ),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "minimum", ""),
        ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, "oneOf", ""),
        (
            {"$defs": {"a": {"$ref": "#/$defs/a"}}, "anyOf": [{"$ref": "#/$defs/a"}]},
            "$ref",
            "/anyOf/0",
        ),
        (
            {"properties": {"p": {"oneOf": [{"type": "object"}, {"required": ["a"]}]}}},
            "oneOf",
            "/properties/p",
        ),
    ],
)
def test_what_cannot_be_enforced_is_refused(
    schema: dict[str, Any], feature: str, pointer: str
) -> None:
    with pytest.raises(UnsupportedSchemaError) as caught:
        schema_grammar(schema)
    assert caught.value.feature == feature
    assert caught.value.pointer == pointer
    assert f"`{feature}`" in str(caught.value)


def test_annotations_are_ignored(model: LlamaModel) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "T",
        "description": "d",
        "type": "object",
        "properties": {"x": {"type": "integer", "default": 3, "examples": [1]}},
        "required": ["x"],
    }
    assert accepts(model, schema_grammar(schema), '{"x":3}')


def test_builder_reuses_identical_rules() -> None:
    builder = GrammarBuilder()
    first = builder.schema({"type": "array", "items": {"type": "integer"}}, "a")
    second = builder.schema({"type": "array", "items": {"type": "integer"}}, "b")
    assert first == second


def test_llama_cpp_rejects_broken_grammar(model: LlamaModel) -> None:
    with pytest.raises(GrammarError) as caught:
        check_grammar(model, 'root ::= "a" undefined-rule\n')
    assert caught.value.status_code == 400
    assert caught.value.code == "invalid_grammar"
    check_grammar(model, 'root ::= "a"\n')
