"""JSON Schema to GBNF, the grammar language of llama.cpp's grammar sampler.

Generation constrained by these grammars always produces JSON that parses and validates
against the schema. Output is compact (one optional space after ``:`` and ``,``, never a
newline), so a small model cannot wander off into endless whitespace.

What cannot be enforced while sampling is refused with :class:`UnsupportedSchemaError`
naming the keyword and where it is, never silently ignored. Supported: ``type`` (one or a
list), ``enum``, ``const``, ``properties`` / ``required`` / ``additionalProperties``,
``items`` / ``prefixItems`` / ``minItems`` / ``maxItems``, ``minLength`` / ``maxLength``,
``format`` (``date``, ``time``, ``date-time``, ``uuid``), ``minimum`` / ``maximum`` /
``exclusiveMinimum`` / ``exclusiveMaximum`` (integers, and numbers with whole-number
bounds), ``anyOf`` / ``allOf``, ``oneOf`` whose alternatives cannot overlap, and local
``$ref`` (``#/$defs/...``, recursion included). Annotations (``title``, ``description``,
``default``...) are ignored.

A property the schema allows but does not require may be left out; additional properties
are never generated (both always validate).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from helixflow.engine.grammar_numbers import integer_range, number_range

_MAX_DIGITS = 16
"""Digits of an unbounded integer part: keeps a looping model from writing endless digits."""

# Rules every grammar may use. ``sp`` is the only whitespace: one optional space.
_BASE_RULES: dict[str, str] = {
    "sp": '" "?',
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": r'"\"" char* "\""',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "integer": f'"-"? ("0" | [1-9] [0-9]{{0,{_MAX_DIGITS - 1}}})',
    "number": f'integer ("." [0-9]{{1,{_MAX_DIGITS}}})? ([eE] [-+]? [0-9]{{1,3}})?',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" (string ":" sp value ("," sp string ":" sp value)*)? "}"',
    "array": '"[" (value ("," sp value)*)? "]"',
}
_BASE_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "string": ("char",),
    "number": ("integer",),
    "value": ("object", "array", "string", "number", "boolean", "null"),
    "object": ("string", "sp", "value"),
    "array": ("value", "sp"),
}
_DATE = '[0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])'
_TIME = (
    '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? '
    '("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])'
)
_HEX = "[0-9a-fA-F]"
_QUOTE = r'"\""'
_FORMATS: dict[str, str] = {
    "date": f"{_QUOTE} {_DATE} {_QUOTE}",
    "time": f"{_QUOTE} {_TIME} {_QUOTE}",
    "date-time": f'{_QUOTE} {_DATE} "T" {_TIME} {_QUOTE}',
    "uuid": f'{_QUOTE} {_HEX}{{8}} "-" {_HEX}{{4}} "-" {_HEX}{{4}} "-" {_HEX}{{4}} "-" '
    f"{_HEX}{{12}} {_QUOTE}",
}

# Assertions with no grammar: refused rather than ignored.
_UNSUPPORTED = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "contains",
        "minContains",
        "maxContains",
        "multipleOf",
        "pattern",
        "unevaluatedItems",
        "$dynamicRef",
        "$recursiveRef",
    }
)
_RULE_NAME = re.compile(r"[^a-zA-Z0-9-]+")
_LITERAL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class UnsupportedSchemaError(ValueError):
    """The schema asks for something generation cannot guarantee."""

    def __init__(self, feature: str, pointer: str, detail: str = "") -> None:
        where = pointer or "/"
        super().__init__(
            f"`{feature}` (at {where}) cannot be enforced during generation"
            + (f": {detail}" if detail else "")
        )
        self.feature = feature
        self.pointer = pointer


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = "".join(_LITERAL_ESCAPES.get(c, c) for c in text)
    return f'"{escaped}"'


def json_literal(value: Any) -> str:
    """A GBNF literal matching ``value`` written as compact JSON."""
    return literal(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


class GrammarBuilder:
    """Collects named GBNF rules; :meth:`schema` adds a JSON schema's rules, :meth:`build`
    renders the grammar with a ``root`` rule."""

    def __init__(self) -> None:
        self._rules: dict[str, str] = {}
        self._refs: dict[str, str] = {}
        self._documents: list[Mapping[str, Any]] = []

    # -- rules -------------------------------------------------------------------------------
    def base(self, name: str) -> str:
        """One of the shared rules (``value``, ``object``, ``string``...), with its dependencies."""
        if name not in self._rules:
            self._rules[name] = _BASE_RULES[name]
            for dep in _BASE_DEPENDENCIES.get(name, ()):
                self.base(dep)
        return name

    def rule(self, hint: str, body: str) -> str:
        """Add a rule (reusing an identical one) and return its name."""
        for name, existing in self._rules.items():
            if existing == body:
                return name
        name = self._fresh(hint)
        self._rules[name] = body
        return name

    def _fresh(self, hint: str) -> str:
        stem = _RULE_NAME.sub("-", hint).strip("-").lower()[:48] or "r"
        name, i = stem, 1
        while name in self._rules or name in _BASE_RULES or name == "root":
            i += 1
            name = f"{stem}-{i}"
        return name

    def build(self, root: str) -> str:
        lines = [f"root ::= {root}"]
        lines.extend(f"{name} ::= {body}" for name, body in self._rules.items())
        return "\n".join(lines) + "\n"

    # -- schemas -----------------------------------------------------------------------------
    def schema(self, schema: Any, hint: str) -> str:
        """A GBNF expression for JSON values valid against ``schema`` (a whole document: its
        ``$ref`` pointers resolve against it). Raises :class:`UnsupportedSchemaError`."""
        self._documents.append(schema if isinstance(schema, Mapping) else {})
        try:
            return self._visit(schema, hint, "")
        finally:
            self._documents.pop()

    def _visit(self, schema: Any, hint: str, pointer: str) -> str:
        if schema is True or (isinstance(schema, Mapping) and not _assertions(schema)):
            return self.base("value")
        if schema is False:
            raise UnsupportedSchemaError("false", pointer, "no value is valid against it")
        if not isinstance(schema, Mapping):
            raise UnsupportedSchemaError(type(schema).__name__, pointer, "not a schema")
        for key in schema:
            if key in _UNSUPPORTED:
                raise UnsupportedSchemaError(key, pointer)
        if schema.get("uniqueItems") is True:
            raise UnsupportedSchemaError("uniqueItems", pointer)
        if "anyOf" in schema and "oneOf" in schema:
            raise UnsupportedSchemaError("oneOf", pointer, "together with `anyOf`")
        if "$ref" in schema:
            return self._ref(schema, hint, pointer)
        if "allOf" in schema:
            return self._visit(self._merge_all_of(schema, pointer), hint, pointer)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._union(schema, key, hint, pointer)
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else list(schema["enum"])
            if "const" in schema and "enum" in schema and values[0] not in schema["enum"]:
                raise UnsupportedSchemaError("const", pointer, "not among the `enum` values")
            return self._enum(values, schema, pointer)
        types = schema.get("type")
        if isinstance(types, list):
            alts = [self._typed(schema, str(t), f"{hint}-{t}", pointer) for t in types]
            return self.rule(hint, " | ".join(alts))
        if types is None:
            types = _implied_type(schema)
        if types is None:
            return self.base("value")
        return self._typed(schema, str(types), hint, pointer)

    def _typed(self, schema: Mapping[str, Any], kind: str, hint: str, pointer: str) -> str:
        if kind == "object":
            return self._object(schema, hint, pointer)
        if kind == "array":
            return self._array(schema, hint, pointer)
        if kind == "string":
            return self._string(schema, hint, pointer)
        if kind in ("integer", "number"):
            return self._number(schema, kind, hint, pointer)
        if kind in ("boolean", "null"):
            return self.base(kind)
        raise UnsupportedSchemaError("type", pointer, f"unknown type {kind!r}")

    def _ref(self, schema: Mapping[str, Any], hint: str, pointer: str) -> str:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise UnsupportedSchemaError("$ref", pointer, f"only local references, not {ref!r}")
        if len(schema) > 1 and _assertions({k: v for k, v in schema.items() if k != "$ref"}):
            raise UnsupportedSchemaError("$ref", pointer, "keywords beside `$ref`")
        if ref in self._refs:
            return self._refs[ref]
        target: Any = self._documents[-1]
        for part in ref[2:].split("/") if ref != "#" else ():
            key = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or key not in target:
                raise UnsupportedSchemaError("$ref", pointer, f"{ref!r} does not resolve")
            target = target[key]
        # Name the rule before visiting the target, so recursive references resolve to it.
        name = self._fresh(f"ref-{ref.rsplit('/', 1)[-1]}")
        self._rules[name] = ""
        self._refs[ref] = name
        self._rules[name] = self._visit(target, f"{name}-body", ref[1:])
        return name

    def _merge_all_of(self, schema: Mapping[str, Any], pointer: str) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for i, part in enumerate(schema["allOf"]):
            where = f"{pointer}/allOf/{i}"
            part = self._resolve_local(part, where)
            if not isinstance(part, Mapping):
                raise UnsupportedSchemaError("allOf", where, "only object schemas can be merged")
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *value]
                elif key in merged and merged[key] != value and key in _assertions(part):
                    raise UnsupportedSchemaError("allOf", where, f"conflicting `{key}`")
                else:
                    merged[key] = value
        return merged

    def _resolve_local(self, schema: Any, pointer: str) -> Any:
        hops = 0
        while isinstance(schema, Mapping) and "$ref" in schema:
            hops += 1
            if hops > 32:
                raise UnsupportedSchemaError("$ref", pointer, "references that never resolve")
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise UnsupportedSchemaError("$ref", pointer, f"only local references, not {ref}")
            target: Any = self._documents[-1]
            for part in ref[2:].split("/") if ref != "#" else ():
                target = target.get(part) if isinstance(target, Mapping) else None
            if target is None:
                raise UnsupportedSchemaError("$ref", pointer, f"{ref!r} does not resolve")
            schema = target
        return schema

    def _union(self, schema: Mapping[str, Any], key: str, hint: str, pointer: str) -> str:
        siblings = {k: v for k, v in schema.items() if k != key}
        options: list[Any] = []
        for i, alt in enumerate(schema[key]):
            alt = self._resolve_local(alt, f"{pointer}/{key}/{i}")
            if _assertions(siblings) and isinstance(alt, Mapping):
                alt = _merge(siblings, alt)
            options.append(alt)
        if not options:
            raise UnsupportedSchemaError(key, pointer, "no alternatives")
        if key == "oneOf" and not _exclusive(options):
            raise UnsupportedSchemaError(
                key, pointer, "its alternatives may overlap (a value must match exactly one)"
            )
        alts = [
            self._visit(alt, f"{hint}-{i}", f"{pointer}/{key}/{i}") for i, alt in enumerate(options)
        ]
        return self.rule(hint, " | ".join(alts))

    def _enum(self, values: list[Any], schema: Mapping[str, Any], pointer: str) -> str:
        types = schema.get("type")
        allowed = set(types) if isinstance(types, list) else {types} if types else None
        kept = [v for v in values if allowed is None or _json_type(v) & allowed]
        if not kept:
            raise UnsupportedSchemaError("enum", pointer, "no value matches `type`")
        return "(" + " | ".join(json_literal(v) for v in kept) + ")"

    def _object(self, schema: Mapping[str, Any], hint: str, pointer: str) -> str:
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        if not properties:
            if isinstance(extra, Mapping) and _assertions(extra):
                value = self._visit(extra, f"{hint}-value", f"{pointer}/additionalProperties")
                pair = f'{self.base("string")} ":" sp {value}'
                self.base("sp")
                return self.rule(hint, f'"{{" ({pair} ("," sp {pair})*)? "}}"')
            if properties is None and extra is not False and not schema.get("required"):
                return self.base("object")
        properties = properties or {}
        required = list(dict.fromkeys(schema.get("required", [])))
        for name in required:
            if name not in properties:
                raise UnsupportedSchemaError(
                    "required", pointer, f"{name!r} is required but not among `properties`"
                )
        pairs: dict[str, str] = {}
        for name, sub in properties.items():
            where = f"{pointer}/properties/{_escape_pointer(name)}"
            value = self._visit(sub, f"{hint}-{name}", where)
            pairs[name] = f"{json_literal(name)} {literal(':')} sp {value}"
        self.base("sp")
        head = ' "," sp '.join(pairs[n] for n in required)
        optional = [n for n in properties if n not in required]
        if not optional:
            return self.rule(hint, f'"{{" {head} "}}"' if head else '"{" "}"')
        if head:
            tail = " ".join(f'("," sp {pairs[n]})?' for n in optional)
            return self.rule(hint, f'"{{" {head} {tail} "}}"')
        # No required property: any ordered subset of the optional ones, comma-separated.
        tails: list[str] = []
        rest = ""
        for name in reversed(optional):
            tails.insert(0, rest)
            rest = self.rule(f"{hint}-after-{name}", f'("," sp {pairs[name]})? {rest}'.strip())
        starts = [f"{pairs[n]} {t}".strip() for n, t in zip(optional, tails, strict=True)]
        return self.rule(hint, '"{" (' + " | ".join(starts) + ')? "}"')

    def _array(self, schema: Mapping[str, Any], hint: str, pointer: str) -> str:
        self.base("sp")
        low = int(schema.get("minItems", 0))
        high = None if schema.get("maxItems") is None else int(schema["maxItems"])
        if high is not None and low > high:
            raise UnsupportedSchemaError("minItems", pointer, "more than `maxItems`")
        prefix = schema.get("prefixItems")
        if prefix:
            if low > len(prefix):
                raise UnsupportedSchemaError("minItems", pointer, "more items than `prefixItems`")
            keep = len(prefix) if high is None else min(len(prefix), high)
            items = [
                self._visit(s, f"{hint}-{i}", f"{pointer}/prefixItems/{i}")
                for i, s in enumerate(prefix[:keep])
            ]
            return self.rule(hint, f'"[" {_sequence(items)} "]"')
        if high == 0:
            return self.rule(hint, '"[" "]"')
        item = self._visit(schema.get("items", True), f"{hint}-item", f"{pointer}/items")
        more_low = max(low - 1, 0)
        if high is None:
            more = "*" if more_low == 0 else f"{{{more_low},}}"
        else:
            more = f"{{{more_low},{high - 1}}}"
        body = item if more == "{0,0}" else f'{item} ("," sp {item}){more}'
        return self.rule(hint, f'"[" {body if low else f"({body})?"} "]"')

    def _string(self, schema: Mapping[str, Any], hint: str, pointer: str) -> str:
        fmt = schema.get("format")
        if fmt is not None:
            if fmt not in _FORMATS:
                raise UnsupportedSchemaError(
                    "format", pointer, f"{fmt!r} (supported: {', '.join(sorted(_FORMATS))})"
                )
            if "minLength" in schema or "maxLength" in schema:
                raise UnsupportedSchemaError("minLength", pointer, "together with `format`")
            return self.rule(f"{hint}-{fmt}", _FORMATS[fmt])
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        if low == 0 and high is None:
            return self.base("string")
        self.base("char")
        count = f"{{{low},{int(high)}}}" if high is not None else f"{{{low},}}"
        return self.rule(hint, rf'"\"" char{count} "\""')

    def _number(self, schema: Mapping[str, Any], kind: str, hint: str, pointer: str) -> str:
        bounds = {k: schema[k] for k in _BOUNDS if k in schema}
        if not bounds:
            return self.base(kind)
        try:
            if kind == "integer":
                return self.rule(hint, integer_range(*_integer_bounds(bounds)))
            for key, value in bounds.items():
                if not float(value).is_integer():
                    raise UnsupportedSchemaError(
                        key, pointer, f"only whole-number bounds on numbers, not {value}"
                    )
            low = _tightest(bounds, "minimum", "exclusiveMinimum", max)
            high = _tightest(bounds, "maximum", "exclusiveMaximum", min)
            return self.rule(hint, number_range(low, high))
        except ValueError as exc:
            if isinstance(exc, UnsupportedSchemaError):
                raise
            raise UnsupportedSchemaError(next(iter(bounds)), pointer, str(exc)) from exc


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "$defs",
        "definitions",
        "$anchor",
        "deprecated",
        "readOnly",
        "writeOnly",
        "strict",
    }
)


def _assertions(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in _ANNOTATIONS}


def _implied_type(schema: Mapping[str, Any]) -> str | None:
    """The type a schema without ``type`` constrains, from its keywords."""
    if {"properties", "additionalProperties", "required"} & schema.keys():
        return "object"
    if {"items", "prefixItems", "minItems", "maxItems"} & schema.keys():
        return "array"
    if {"minLength", "maxLength", "format"} & schema.keys():
        return "string"
    if set(_BOUNDS) & schema.keys():
        return "number"
    return None


def _exclusive(options: list[Any]) -> bool:
    """Can no value match two of ``options``? (Checked for ``oneOf``: disjoint types,
    disjoint constants, or objects told apart by a required constant property.)"""
    kinds = [_kinds(o) for o in options]
    if all(k is not None for k in kinds):
        seen: set[str] = set()
        for k in kinds:
            assert k is not None
            if k & seen:
                break
            seen |= k
        else:
            return True
    constants = [_constants(o) for o in options]
    if all(c is not None for c in constants):
        flat = [json.dumps(v, sort_keys=True) for c in constants for v in c or ()]
        if len(flat) == len(set(flat)):
            return True
    if not all(isinstance(o, Mapping) for o in options):
        return False
    shared = set.intersection(*(set(o.get("required", ())) for o in options))
    for name in sorted(shared):
        tags = [_constants(o.get("properties", {}).get(name)) for o in options]
        flat = [json.dumps(v, sort_keys=True) for t in tags if t is not None for v in t]
        if all(t is not None for t in tags) and len(flat) == len(set(flat)):
            return True
    return False


def _kinds(schema: Any) -> set[str] | None:
    """The JSON types a schema allows (integer counted as number), or None if unknown."""
    if not isinstance(schema, Mapping):
        return None
    types = schema.get("type")
    if types is None:
        types = _implied_type(schema)
    if types is None:
        return None
    names = set(types) if isinstance(types, list) else {types}
    return {"number" if t == "integer" else str(t) for t in names}


def _constants(schema: Any) -> list[Any] | None:
    if not isinstance(schema, Mapping):
        return None
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        return list(schema["enum"])
    return None


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if key == "properties":
            merged["properties"] = {**merged.get("properties", {}), **value}
        elif key == "required":
            merged["required"] = [*merged.get("required", []), *value]
        else:
            merged[key] = value
    return merged


def _json_type(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number", "integer"} if value.is_integer() else {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list):
        return {"array"}
    return {"object"}


def _integer_bounds(bounds: Mapping[str, Any]) -> tuple[int | None, int | None]:
    lows: list[int] = []
    highs: list[int] = []
    if "minimum" in bounds:
        lows.append(math.ceil(bounds["minimum"]))
    if "exclusiveMinimum" in bounds:
        lows.append(math.floor(bounds["exclusiveMinimum"]) + 1)
    if "maximum" in bounds:
        highs.append(math.floor(bounds["maximum"]))
    if "exclusiveMaximum" in bounds:
        highs.append(math.ceil(bounds["exclusiveMaximum"]) - 1)
    return (max(lows) if lows else None, min(highs) if highs else None)


def _tightest(
    bounds: Mapping[str, Any], inclusive: str, exclusive: str, pick: Any
) -> tuple[int, bool] | None:
    """The tighter of an inclusive and an exclusive bound, as (value, exclusive)."""
    found = [(int(bounds[k]), k == exclusive) for k in (inclusive, exclusive) if k in bounds]
    if not found:
        return None
    value = pick(v for v, _ in found)
    return value, any(strict for v, strict in found if v == value)


def _sequence(items: list[str]) -> str:
    """``items`` in order, comma-separated."""
    return ' "," sp '.join(items)


def _escape_pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def schema_grammar(schema: Any) -> str:
    """A grammar whose root matches exactly the compact JSON values valid against ``schema``
    (raises :class:`UnsupportedSchemaError`)."""
    builder = GrammarBuilder()
    return builder.build(builder.schema(schema, "value-of"))


def json_object_grammar() -> str:
    """A grammar for any JSON object (``response_format: json_object``)."""
    builder = GrammarBuilder()
    return builder.build(builder.base("object"))
