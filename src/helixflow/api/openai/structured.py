"""Structured output: JSON schemas from requests checked, and turned into grammars.

``response_format`` ``json_object`` / ``json_schema`` and the parameters of forced tool calls
are enforced while sampling (see :mod:`helixflow.engine.grammar`). A schema that is not valid
JSON Schema is a 400 ``invalid_schema``; one that uses a keyword generation cannot enforce is a
400 ``unsupported_schema_feature``, naming the keyword.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from helixflow.api.openai.protocol import ResponseFormat
from helixflow.engine.grammar import GrammarBuilder, UnsupportedSchemaError
from helixflow.errors import InvalidRequestError

SCHEMA_PARAM = "response_format.json_schema.schema"


def check_schema(schema: Mapping[str, Any], param: str) -> None:
    """Raise a 400 ``invalid_schema`` unless ``schema`` is valid JSON Schema (2020-12)."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/" + "/".join(str(p) for p in exc.absolute_path)
        raise InvalidRequestError(
            f"Invalid schema for '{param}': {exc.message} (at {where}).",
            param=param,
            code="invalid_schema",
        ) from exc


def schema_expression(
    builder: GrammarBuilder, schema: Mapping[str, Any], hint: str, param: str
) -> str:
    """The grammar expression for values of ``schema``; a 400 naming the keyword when it
    cannot be enforced."""
    try:
        return builder.schema(schema, hint)
    except UnsupportedSchemaError as exc:
        raise InvalidRequestError(
            f"The schema in '{param}' uses {exc}. Remove it or describe the constraint in "
            "the prompt instead.",
            param=param,
            code="unsupported_schema_feature",
        ) from exc


def check_response_format(fmt: ResponseFormat | None) -> None:
    if fmt is not None and fmt.type == "json_schema":
        assert fmt.json_schema is not None  # the protocol model requires it
        check_schema(fmt.json_schema.schema_, SCHEMA_PARAM)


def content_expression(builder: GrammarBuilder, fmt: ResponseFormat | None) -> str | None:
    """The grammar expression the reply's content must match, or None for free text."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return builder.base("object")
    assert fmt.json_schema is not None
    return schema_expression(builder, fmt.json_schema.schema_, "content", SCHEMA_PARAM)
