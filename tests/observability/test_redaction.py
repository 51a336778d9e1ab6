"""RedactingFilter: secrets never reach a log handler, whatever part of the record holds them."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helixflow.observability.redaction import RedactingFilter, install_redaction, redact

HF_KEY = "hf-" + "Ab3_x-" * 6
SK_KEY = "sk-proj-" + "Q9z" * 10
JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ"
    ".eyJzdWIiOiJ1MSIsImV4cCI6MTcwMDAwMDAwMH0"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmU_-x"
)
OPAQUE = "opaqueSecret123"

# (text holding a secret, the secret, what must remain)
CASES = [
    (f"Authorization: Bearer {OPAQUE}", OPAQUE, "Authorization: Bearer ***"),
    (f"headers={{'authorization': 'Bearer {OPAQUE}'}}", OPAQUE, "'Bearer ***'"),
    (f"upstream said: bearer {OPAQUE}.", OPAQUE, "bearer ***"),
    (f"Authorization: Basic {OPAQUE}", OPAQUE, "Authorization: Basic ***"),
    (f"authorization={OPAQUE}", OPAQUE, "authorization=***"),
    (f"key {HF_KEY} refused", HF_KEY, "key hf-*** refused"),
    (f"provider key {SK_KEY} rejected", SK_KEY, "provider key sk-*** rejected"),
    (f"session {JWT} expired", JWT, "session *** expired"),
    (f"login password={OPAQUE}&user=ada", OPAQUE, "password=***&user=ada"),
    (f'body {{"username": "ada", "password": "{OPAQUE} x"}}', OPAQUE, '"password": "***"'),
    (f"kwargs {{'password': '{OPAQUE}'}}", OPAQUE, "'password': '***'"),
    (f"HELIXFLOW_ADMIN_PASSWORD={OPAQUE}", OPAQUE, "HELIXFLOW_ADMIN_PASSWORD=***"),
    (f"x-api-key: {OPAQUE}", OPAQUE, "x-api-key: ***"),
    (f"GET /v1/models?api_key={OPAQUE}&limit=5", OPAQUE, "api_key=***&limit=5"),
    (f"Cookie: helixflow_session={OPAQUE}; helixflow_csrf=x", OPAQUE, "Cookie: ***"),
    (
        f"cannot reach postgresql://helix:{OPAQUE}@db.internal:5432/helix",
        OPAQUE,
        "postgresql://helix:***@db.internal:5432/helix",
    ),
    (
        f"postgresql+asyncpg://helix:p@ss{OPAQUE}@db/helix",
        OPAQUE,
        "postgresql+asyncpg://helix:***@db/helix",
    ),
    (f"redis://:{OPAQUE}@cache:6379/0", OPAQUE, "redis://:***@cache:6379/0"),
]

UNTOUCHED = [
    "POST /v1/chat/completions 200 in 12.5 ms",
    "model smollm2-135m loaded: 135M parameters, max_tokens=256, n_tokens: 12",
    "routing to https://api.openai.com:443/v1 (round_robin)",
    "secret_env=HELIXFLOW_SECRET password_file=None",
    "user ada logged in; invalid password for bob",
    "key prefix hf-Ab3x (short ids are not keys)",
    "task-scheduler started; eyJ alone is not a token",
]


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger whose one handler writes to a buffer, with the filter installed."""
    logger = logging.getLogger(f"test.redaction.{id(object())}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    install_redaction(logger)
    yield logger, buffer
    logger.removeHandler(handler)


@pytest.mark.parametrize(("text", "secret", "kept"), CASES)
def test_redact_masks_each_kind_of_secret(text: str, secret: str, kept: str) -> None:
    masked = redact(text)
    assert secret not in masked
    assert kept in masked


@pytest.mark.parametrize("text", UNTOUCHED)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(("text", "secret", "kept"), CASES)
def test_secret_in_the_message(
    capture: tuple[logging.Logger, io.StringIO], text: str, secret: str, kept: str
) -> None:
    logger, buffer = capture
    logger.info(text)
    assert secret not in buffer.getvalue()
    assert kept in buffer.getvalue()


@pytest.mark.parametrize(("text", "secret", "kept"), CASES)
def test_secret_in_a_percent_argument(
    capture: tuple[logging.Logger, io.StringIO], text: str, secret: str, kept: str
) -> None:
    logger, buffer = capture
    logger.warning("request %d failed: %s (%r)", 7, text, "ok")
    out = buffer.getvalue()
    assert secret not in out
    assert kept in out
    assert out.startswith("WARNING request 7 failed: ")
    assert out.rstrip().endswith("('ok')")


def test_secret_split_between_message_and_argument(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = capture
    logger.info("sending Authorization: Bearer %s to %s", OPAQUE, "acme")
    assert buffer.getvalue() == "INFO sending Authorization: Bearer *** to acme\n"


def test_secret_in_a_dict_or_object_argument(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture

    class Settings:
        def __repr__(self) -> str:
            return f"Settings(url='postgresql://u:{OPAQUE}@h/db')"

    logger.info("login body %s", {"username": "ada", "password": OPAQUE})
    logger.info("settings %r and %s", Settings(), [HF_KEY])
    logger.info("%(who)s used %(key)s", {"who": "ada", "key": HF_KEY})
    out = buffer.getvalue()
    assert OPAQUE not in out
    assert HF_KEY not in out
    assert "'password': '***'" in out
    assert "postgresql://u:***@h/db" in out
    assert "ada used hf-***" in out


def test_record_without_secret_keeps_its_arguments() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s took %d ms", ("chat", 5), None)
    assert RedactingFilter().filter(record) is True
    assert record.msg == "%s took %d ms"
    assert record.args == ("chat", 5)


def test_record_with_secret_in_args_drops_them() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", (HF_KEY,), None)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "key hf-***"
    assert not record.args


def test_non_string_message(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    logger.error(ValueError(f"bad dsn postgresql://u:{OPAQUE}@h/db"))
    assert OPAQUE not in buffer.getvalue()
    assert "postgresql://u:***@h/db" in buffer.getvalue()


def test_traceback_text_is_masked(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    try:
        raise RuntimeError(f"upstream refused Authorization: Bearer {OPAQUE}")
    except RuntimeError:
        logger.exception("call failed")
    out = buffer.getvalue()
    assert "Traceback" in out
    assert "RuntimeError: upstream refused Authorization: Bearer ***" in out
    assert OPAQUE not in out


def test_stack_info_is_masked(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = capture
    logger.info("token=%s", "abc", stack_info=True)  # the stack shows this source line
    out = buffer.getvalue()
    stack = out[out.index("Stack (most recent call last)") :]
    assert 'logger.info("token=***' in stack
    assert "token=%s" not in stack
    assert out.startswith("INFO token=***\n")


def test_works_with_the_servers_rich_handler() -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    logger = logging.getLogger("test.redaction.rich")
    logger.propagate = False
    buffer = io.StringIO()
    handler = RichHandler(
        console=Console(file=buffer, width=400), show_path=False, rich_tracebacks=False
    )
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger.addHandler(handler)
    try:
        install_redaction(logger)
        try:
            raise ConnectionError(f"postgresql://helix:{OPAQUE}@db/helix unreachable")
        except ConnectionError:
            logger.exception("store failed with key %s", HF_KEY)
    finally:
        logger.removeHandler(handler)
    out = buffer.getvalue()
    assert "store failed with key hf-***" in out
    assert "postgresql://helix:***@db/helix" in out
    assert OPAQUE not in out
    assert HF_KEY not in out


def test_malformed_arguments_are_masked_for_the_error_report() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s %s", (HF_KEY,), None)
    RedactingFilter().filter(record)
    assert HF_KEY not in repr(record.args)
    assert HF_KEY not in str(record.msg)


def test_install_covers_every_handler_once() -> None:
    logger = logging.getLogger("test.redaction.install")
    first, second = logging.StreamHandler(io.StringIO()), logging.StreamHandler(io.StringIO())
    logger.addHandler(first)
    logger.addHandler(second)
    try:
        installed = install_redaction(logger)
        install_redaction(logger)  # again: nothing doubles
        assert first.filters == [installed]
        assert second.filters == [installed]
    finally:
        logger.removeHandler(first)
        logger.removeHandler(second)


def test_install_defaults_to_the_root_logger() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        install_redaction()
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
    finally:
        root.removeHandler(handler)


@given(st.text())
def test_arbitrary_text_never_makes_the_filter_raise(text: str) -> None:
    masked = redact(text)
    assert redact(masked) == masked
    formatter = logging.Formatter("%(message)s")
    escaped = text.replace("%", "%%")
    well_formed: list[tuple[str, object]] = [
        (escaped, None),  # a message alone is not %-formatted: rendered as is
        ("%s", (text,)),
        ("%(a)s", ({"a": text},)),
    ]
    for msg, args in well_formed:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, msg, args, None)  # type: ignore[arg-type]
        assert RedactingFilter().filter(record) is True
        assert formatter.format(record) == redact(escaped if args is None else text)
    malformed = logging.LogRecord("x", logging.INFO, __file__, 1, text, (text, 1), None)
    assert RedactingFilter().filter(malformed) is True


@given(
    st.text(alphabet=st.sampled_from(list("hfsk-_eyJ.:/@=\"' Bearerpasswordtoken")), max_size=200)
)
def test_secret_shaped_text_never_makes_the_filter_raise(text: str) -> None:
    masked = redact(text)
    assert redact(masked) == masked
