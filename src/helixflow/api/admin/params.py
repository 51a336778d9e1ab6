"""Query parameters of the admin API: strings, validated into 400 envelopes naming them.

The admin endpoints declare their query parameters as optional strings and parse them with
these functions, instead of letting FastAPI coerce typed parameters, so that every refusal is
an :class:`InvalidRequestError` whose ``param`` is the parameter and whose code is
``invalid_<param>``. :func:`schema` makes the OpenAPI schema of such a string say what it
really accepts. A blank value (empty or only white space) counts as absent.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Annotated, Any, TypeVar, cast

from fastapi import Query

from helixflow.errors import InvalidRequestError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_NAME_CHARS = 256
"""The longest target or model name stored (the columns' length)."""

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")

Choice = TypeVar("Choice", bound=str)


def schema(**generated_schema: Any) -> Callable[[dict[str, Any]], None]:
    """Replace a string parameter's generated schema with what it really accepts."""

    def apply(generated: dict[str, Any]) -> None:
        generated.clear()
        generated.update(generated_schema)

    return apply


LimitParam = Annotated[
    str | None,
    Query(
        description=f"How many rows at most (1..{MAX_LIMIT}, default {DEFAULT_LIMIT}).",
        json_schema_extra=schema(
            type="integer", minimum=1, maximum=MAX_LIMIT, default=DEFAULT_LIMIT
        ),
    ),
]


def blank(value: str | None) -> str | None:
    """The value without surrounding white space; None when it is absent or blank."""
    return value.strip() if value is not None and value.strip() else None


def present(value: str | None) -> str | None:
    """The value as given (not stripped); None when it is absent or blank."""
    return value if value is not None and value.strip() else None


def one_of(value: str, param: str, choices: Collection[Choice]) -> Choice:
    """One of ``choices`` (white space around it ignored); anything else is refused."""
    name = value.strip()
    if name not in choices:
        raise InvalidRequestError(
            f"Invalid {param} {value!r}: use one of {', '.join(choices)}.",
            param=param,
            code=f"invalid_{param}",
        )
    return cast(Choice, name)


def optional_one_of(value: str | None, param: str, choices: Collection[Choice]) -> Choice | None:
    """:func:`one_of`, or None when the value is absent or blank."""
    if value is None or not value.strip():
        return None
    return one_of(value, param, choices)


def name(value: str | None, param: str, max_chars: int = MAX_NAME_CHARS) -> str | None:
    """A stripped name of at most ``max_chars`` characters, or None when absent or blank."""
    text = blank(value)
    if text is not None and len(text) > max_chars:
        raise InvalidRequestError(
            f"Invalid {param}: at most {max_chars} characters.",
            param=param,
            code=f"invalid_{param}",
        )
    return text


def integer(value: str | None, param: str, maximum: int, minimum: int = 1) -> int | None:
    """An integer from ``minimum`` to ``maximum``, or None when absent or blank."""
    text = blank(value)
    if text is None:
        return None
    try:
        number = int(text)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid {param} {value!r}: expected an integer.",
            param=param,
            code=f"invalid_{param}",
        ) from None
    if not minimum <= number <= maximum:
        raise InvalidRequestError(
            f"Invalid {param} {number}: it must be between {minimum} and {maximum}.",
            param=param,
            code=f"invalid_{param}",
        )
    return number


def limit(value: str | None) -> int:
    """The ``limit`` parameter (see :data:`LimitParam`): 1 to MAX_LIMIT, default DEFAULT_LIMIT."""
    number = integer(value, "limit", MAX_LIMIT)
    return DEFAULT_LIMIT if number is None else number


def flag(value: str | None, param: str) -> bool:
    """A boolean (true/false, 1/0, yes/no, on/off, any case); False when absent or blank."""
    text = blank(value)
    if text is None:
        return False
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise InvalidRequestError(
        f"Invalid {param} {value!r}: use true or false.",
        param=param,
        code=f"invalid_{param}",
    )
