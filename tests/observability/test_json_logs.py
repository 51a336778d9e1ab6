"""JSON logs: one object per line, with the request id and trace ids, secrets masked."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from helixflow.observability.json_logs import (
    REQUEST_ID,
    JsonFormatter,
    configure_json_logging,
    json_handler,
)
from helixflow.observability.redaction import install_redaction
from helixflow.observability.tracing import Tracing

SK_KEY = "sk-proj-" + "Q9z" * 10
HF_KEY = "hf-" + "Ab3_x-" * 6
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger back as it was (configure_json_logging replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("uvicorn.access", "httpx")}
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in noisy.items():
            logging.getLogger(name).setLevel(old)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own with a JSON handler and the redaction filter (root untouched)."""
    out = io.StringIO()
    log = logging.getLogger("helixflow.test.json_logs")
    log.handlers[:] = [json_handler(out)]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    install_redaction(log)
    yield log, out
    log.handlers.clear()
    log.propagate = True


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [orjson.loads(line) for line in text.splitlines()]


def test_one_json_object_per_line(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    log.info("model %s loaded in %.1fs", "smollm2", 1.25)
    log.warning('two\nlines and a "quote" and ünïcode')
    first, second = lines(out)
    assert first == {
        "time": first["time"],
        "level": "INFO",
        "logger": "helixflow.test.json_logs",
        "message": "model smollm2 loaded in 1.2s",
    }
    assert TIME.match(first["time"])
    assert second["level"] == "WARNING"
    assert second["message"] == 'two\nlines and a "quote" and ünïcode'


def test_request_id_from_the_context(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    token = REQUEST_ID.set("0123456789abcdef0123456789abcdef")
    try:
        log.info("serving")
    finally:
        REQUEST_ID.reset(token)
    log.info("between requests")
    served, idle = lines(out)
    assert served["request_id"] == "0123456789abcdef0123456789abcdef"
    assert "request_id" not in idle


def test_trace_and_span_ids_of_the_current_span(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logger
    exporter = InMemorySpanExporter()
    tracing = Tracing.for_tests(exporter)
    with tracing.span("request") as span:
        log.info("inside")
        context = span.span.get_span_context()
    log.info("outside")
    tracing.shutdown()
    inside, outside = lines(out)
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in outside
    assert "span_id" not in outside


def test_secrets_are_masked_in_message_arguments_and_traceback(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logger
    log.info("calling upstream with Authorization: Bearer %s", SK_KEY)
    log.info("key %s refused", HF_KEY)
    try:
        raise RuntimeError(f"cannot reach postgresql://helix:hunter2pass@db:5432/helix {SK_KEY}")
    except RuntimeError:
        log.exception("database down")
    log.info("stack", stack_info=True)
    bearer, key, failure, stacked = lines(out)
    assert bearer["message"] == "calling upstream with Authorization: Bearer ***"
    assert key["message"] == "key hf-*** refused"
    assert failure["message"] == "database down"
    assert failure["exception"].startswith("Traceback (most recent call last):")
    assert (
        "RuntimeError: cannot reach postgresql://helix:***@db:5432/helix sk-***"
        in (failure["exception"])
    )
    assert "test_secrets_are_masked" in stacked["stack"]
    text = out.getvalue()
    for secret in (SK_KEY, HF_KEY, "hunter2pass"):
        assert secret not in text


def test_configure_json_logging_takes_over_the_root_logger(root_logging: None) -> None:
    out = io.StringIO()
    configure_json_logging("warning", stream=out)
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    logging.getLogger("helixflow.anything").info("dropped: below the level")
    logging.getLogger("helixflow.anything").warning("token=%s leaked?", "opaque-secret-1")
    (line,) = lines(out)
    assert line["logger"] == "helixflow.anything"
    assert line["message"] == "token=*** leaked?"
    assert logging.getLogger("httpx").level == logging.WARNING
