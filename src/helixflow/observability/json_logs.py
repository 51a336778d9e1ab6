"""Structured logs: one JSON object per line, for log shippers (``observability.log_format:
json``).

Each line holds ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``,
then when known ``request_id`` (of the HTTP request being served: :data:`REQUEST_ID`, set by
the request-id middleware), ``trace_id`` and ``span_id`` (of the current OpenTelemetry span),
``exception`` and ``stack``. Secrets are masked by the redaction filter that
:func:`configure_json_logging` installs on the handler, which runs before the formatter (the
formatter prints the masked traceback the filter leaves in ``exc_text``). Fields passed as
``extra=`` are not printed: they would bypass the filter.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import IO, Any

import orjson
from opentelemetry import trace

from helixflow.observability.redaction import install_redaction

REQUEST_ID: ContextVar[str | None] = ContextVar("helixflow_request_id", default=None)
"""The id of the request being served in this context (None outside a request)."""

_NOISY = ("uvicorn.access", "httpx")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the text are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            entry["request_id"] = str(request_id)
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry).decode()


def json_handler(stream: IO[str] | None = None) -> logging.StreamHandler[IO[str]]:
    """A handler writing JSON lines to ``stream`` (default: standard error)."""
    handler: logging.StreamHandler[IO[str]] = logging.StreamHandler(
        stream if stream is not None else sys.stderr
    )
    handler.setFormatter(JsonFormatter())
    return handler


def configure_json_logging(level: str = "info", stream: IO[str] | None = None) -> None:
    """Process-wide logging as JSON lines (called once by the CLI, like
    ``configure_logging``): the root logger's only handler, with secrets redacted."""
    logging.basicConfig(level=level.upper(), handlers=[json_handler(stream)], force=True)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_redaction(logging.getLogger())  # keys, tokens and passwords never reach a log
