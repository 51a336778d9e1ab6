"""Keep secrets out of the logs: a ``logging.Filter`` that masks them in every record.

Masked, wherever they appear in a record's message, its arguments, its traceback text:

- credentials after ``Bearer`` (and after ``Authorization:``, whatever the scheme), and the
  whole value of a ``Cookie:`` / ``Set-Cookie:`` header;
- HelixFlow API keys (``hf-`` and 20 or more key characters) and provider keys (``sk-...``,
  ``gsk_...``, ``xai-...``, ``AIza...``);
- JWTs (three base64url segments, the first starting with ``eyJ``);
- values of fields named like passwords, secrets, tokens and API keys, as ``name=value``,
  ``name: value``, ``"name": "value"`` or ``'name': 'value'``;
- the password of any URL with credentials (``postgresql://user:secret@host`` ->
  ``postgresql://user:***@host``).

``install_redaction()`` puts one filter on every handler of the root logger: call it after the
handlers exist (``configure_logging``). Every pattern runs in time linear in the text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

MASK = "***"

Rule = tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]

_QUOTED_DOUBLE = r'"(?:[^"\\\n]|\\.)*"?'
_QUOTED_SINGLE = r"'(?:[^'\\\n]|\\.)*'?"


def _mask_field(match: re.Match[str]) -> str:
    """Keep a field's name, separator and quotes; mask its value."""
    value = match.group(2)
    quote = value[:1] if value[:1] in ('"', "'") else ""
    closing = quote if quote and len(value) > 1 and value.endswith(quote) else ""
    return f"{match.group(1)}{quote}{MASK}{closing}"


_RULES: tuple[Rule, ...] = (
    # URL credentials: scheme://user:password@host (found from the "://", never backtracking
    # over the scheme); the password may itself contain "@", so up to the last one.
    (re.compile(r"(://[^\s:/@]*:)[^\s/]*@"), rf"\g<1>{MASK}@"),
    # Authorization / Proxy-Authorization header values, with or without a scheme word.
    (
        re.compile(
            r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|digest|token|apikey)\s+)?)"
            r"[^\s\"',;]+"
        ),
        rf"\g<1>{MASK}",
    ),
    # Anything after "Bearer ".
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;)\]}>]+"), rf"\g<1>{MASK}"),
    # Cookie and Set-Cookie header values (sessions, refresh tokens, the CSRF token).
    (
        re.compile(r"(?i)\b((?:set-)?cookie[\"']?\s*[:=]\s*[\"']?)[^\s\"';]+(?:;\s?[^\s\"';]+)*"),
        rf"\g<1>{MASK}",
    ),
    # JWTs.
    (re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), MASK),
    # HelixFlow API keys.
    (re.compile(r"(?<![A-Za-z0-9_-])hf-[A-Za-z0-9_-]{20,}"), f"hf-{MASK}"),
    # Provider keys: OpenAI-style (sk-, sk-proj-, sk-ant-...), Groq, xAI, Google.
    (re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{16,}"), f"sk-{MASK}"),
    (re.compile(r"(?<![A-Za-z0-9_-])gsk_[A-Za-z0-9]{20,}"), f"gsk_{MASK}"),
    (re.compile(r"(?<![A-Za-z0-9_-])xai-[A-Za-z0-9]{20,}"), f"xai-{MASK}"),
    (re.compile(r"(?<![A-Za-z0-9_-])AIza[A-Za-z0-9_-]{30,}"), f"AIza{MASK}"),
    # Secret-looking fields: password=..., "password": "...", 'api_key': '...', token: ...
    (
        re.compile(
            r"(?i)((?:password|passwd|passphrase|secret|token|api[_-]?key)[\"']?\s*[:=]\s*)"
            rf"({_QUOTED_DOUBLE}|{_QUOTED_SINGLE}|[^\s\"'&;,)\]}}]+)"
        ),
        _mask_field,
    ),
)


def redact(text: str) -> str:
    """``text`` with every secret the rules recognize masked. Idempotent."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in each record it sees (it never drops one).

    A record with arguments is checked as it will be printed (the message formatted with its
    arguments, so a secret split between the two is found too); when that holds a secret, the
    record's message becomes the masked text and its arguments are dropped. A record without
    any secret is left as it was.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact(record)
        except Exception:  # a log call must never fail because of the filter
            record.msg = "<log record withheld: it could not be checked for secrets>"
            record.args = None
            record.exc_info = None
            record.exc_text = record.stack_info = None
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        if record.args or not isinstance(record.msg, str):
            try:
                message = record.getMessage()
            except Exception:  # malformed arguments: the handler reports them
                _redact_parts(record)
            else:
                masked = redact(message)
                if masked != message:
                    record.msg = masked
                    record.args = None
        else:
            record.msg = redact(record.msg)
        if record.exc_info and not record.exc_text:
            # Rendered here, masked, and cached where every Formatter looks for it first.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)


def _redact_parts(record: logging.LogRecord) -> None:
    """A record whose message cannot be formatted: the handler will print its message and
    arguments apart (``--- Logging error ---``), so mask each."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    args = record.args
    if isinstance(args, Mapping):
        record.args = {key: _redact_value(value) for key, value in args.items()}
    elif isinstance(args, tuple):
        record.args = tuple(_redact_value(value) for value in args)


def _redact_value(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else redact(repr(value))


def install_redaction(logger: logging.Logger | None = None) -> RedactingFilter:
    """Add one ``RedactingFilter`` to every handler of ``logger`` (default: the root logger)
    that has none yet; returns the filter. Handlers added later are not covered."""
    target = logger if logger is not None else logging.getLogger()
    redacting = RedactingFilter()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redacting)
    return redacting
