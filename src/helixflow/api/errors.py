"""The one place that turns exceptions into OpenAI's error envelope."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from helixflow.errors import (
    ERRORS_BY_STATUS,
    HelixFlowError,
    InvalidRequestError,
    UnsupportedMediaTypeError,
    error_envelope,
)

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HelixFlowError, _helixflow_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


def error_response(exc: HelixFlowError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)


async def _helixflow_error(request: Request, exc: HelixFlowError) -> JSONResponse:
    if exc.status_code >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(exc)


# Pydantic names the member of a union in an error's location ("str", "list[int]", a model's
# class name); these are not part of the request's field path.
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none"})
_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})


def _param(loc: tuple[Any, ...]) -> str | None:
    # The first element names where the value came from, not part of its name.
    parts = list(loc[1:]) if loc and loc[0] in _SOURCES else list(loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (
            isinstance(part, str)
            and not part[:1].isupper()
            and "[" not in part
            and part not in _UNION_TAGS
        ):
            out += f".{part}" if out else part
    return out or None


def _join_param(base: str | None, extra: Any) -> str | None:
    """A validator may name the field it rejects in its error's context (``param``)."""
    if not isinstance(extra, str) or not extra:
        return base
    if not base:
        return extra
    return base + extra if extra.startswith("[") else f"{base}.{extra}"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first: dict[str, Any] = (
        dict(errors[0]) if errors else {"msg": "invalid request", "loc": (), "type": ""}
    )
    if first.get("type") == "json_invalid":
        message = (
            "We could not parse the JSON body of your request: "
            f"{first.get('ctx', {}).get('error', 'invalid JSON')}."
        )
        body = error_envelope(message, "invalid_request_error", None, "invalid_json")
        return JSONResponse(body, status_code=400)
    if tuple(first.get("loc", ())) == ("body",) and (
        first.get("type") == "missing" or not isinstance(first.get("input"), dict)
    ):
        return _body_error(request, first)
    ctx = first.get("ctx") or {}
    param = _join_param(_param(tuple(first.get("loc", ()))), ctx.get("param"))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {msg}."
    else:
        message = f"Invalid request body: {msg}."
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    body = error_envelope(message, "invalid_request_error", param, str(first.get("type")) or None)
    return JSONResponse(body, status_code=400)


def _body_error(request: Request, error: dict[str, Any]) -> JSONResponse:
    """The body as a whole is wrong: absent, not sent as JSON, or JSON but not an object."""
    code = str(error.get("type")) or None
    value = error.get("input")
    if error.get("type") == "missing":
        message = "The request body is empty; send a JSON object."
    elif isinstance(value, bytes | bytearray):
        # FastAPI parses JSON only when the Content-Type says so; otherwise we get bytes.
        content_type = request.headers.get("content-type")
        got = f"'{content_type}'" if content_type else "none"
        return error_response(
            UnsupportedMediaTypeError(
                f"Send the request body as JSON with 'Content-Type: application/json' "
                f"(Content-Type: {got})."
            )
        )
    else:
        kind = {
            list: "an array",
            str: "a string",
            bool: "a boolean",
            type(None): "null",
            int: "a number",
            float: "a number",
        }.get(type(value), "not an object")
        message = f"The request body must be a JSON object, not {kind}."
    body = error_envelope(message, "invalid_request_error", None, code)
    return JSONResponse(body, status_code=400)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"Unknown URL: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    error = ERRORS_BY_STATUS.get(exc.status_code, InvalidRequestError)(message)
    return JSONResponse(
        error.envelope(), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = error_envelope(
        "The server had an error while processing your request.",
        "server_error",
        None,
        "internal_error",
    )
    return JSONResponse(body, status_code=500)
