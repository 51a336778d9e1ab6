"""Time ranges for the analytics API: ``window=24h``, or explicit ``since``/``until`` instants.

A range is half-open, ``[since, until)``, in UTC. The rules:

- ``window`` alone (default ``24h``) ends now;
- ``since`` alone ends now; ``until`` (with or without ``window``) ends there;
- ``window`` together with ``since`` is refused: one of them would be ignored;
- a range is at most :data:`MAX_WINDOW` long and ``since`` must be before ``until``.

Every refusal is an :class:`InvalidRequestError` naming the offending query parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from helixflow.api.admin.params import present
from helixflow.errors import InvalidRequestError
from helixflow.store.repositories.analytics import BUCKET_WIDTHS

DEFAULT_WINDOW = "24h"
MAX_WINDOW = timedelta(days=90)
MAX_BUCKETS = 1440
"""The most bucket widths a time series may span (a day of minutes, 60 days of hours)."""

BUCKETS: Mapping[str, timedelta] = BUCKET_WIDTHS
"""Bucket names and widths, as the repository computes them."""

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_WINDOW = re.compile(r"(?:[0-9]{1,9}[smhdw])+")
_WINDOW_PART = re.compile(r"([0-9]+)([smhdw])")
# A '+' of a UTC offset arrives as a space when the client did not percent-encode it.
_SPACED_OFFSET = re.compile(
    r"(.*[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?) ([0-9]{2}:?[0-9]{2})"
)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """``[since, until)`` in UTC."""

    since: datetime
    until: datetime

    @property
    def duration(self) -> timedelta:
        return self.until - self.since


def parse_window(text: str, *, param: str = "window") -> timedelta:
    """``15m``, ``1h``, ``24h``, ``7d``, ``2w``, or a sum such as ``1h30m``; at most 90 days."""
    value = text.strip()
    if not _WINDOW.fullmatch(value):
        raise InvalidRequestError(
            f"Invalid window {text!r}: use a number and a unit (s, m, h, d or w), "
            "such as 15m, 1h, 24h or 7d.",
            param=param,
            code="invalid_window",
        )
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _WINDOW_PART.findall(value))
    if seconds <= 0:
        raise InvalidRequestError(
            f"Invalid window {text!r}: it must be longer than zero.",
            param=param,
            code="invalid_window",
        )
    if seconds > MAX_WINDOW.total_seconds():
        raise InvalidRequestError(
            f"Invalid window {text!r}: at most {MAX_WINDOW.days}d.",
            param=param,
            code="window_too_large",
        )
    return timedelta(seconds=seconds)


def parse_instant(text: str, *, param: str) -> datetime:
    """An ISO-8601 date or date-time; without an offset it is taken as UTC. Returns UTC."""
    value = text.strip()
    spaced = _SPACED_OFFSET.fullmatch(value)
    if spaced:
        value = f"{spaced.group(1)}+{spaced.group(2)}"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid {param} {text!r}: use an ISO-8601 date-time such as 2024-05-01T10:00:00Z.",
            param=param,
            code="invalid_datetime",
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidRequestError(
            f"Invalid {param} {text!r}: out of range.", param=param, code="invalid_datetime"
        ) from None


def resolve_range(
    *,
    window: str | None = None,
    since: str | None = None,
    until: str | None = None,
    now: datetime | None = None,
) -> TimeRange:
    """The range the query parameters describe (blank parameters count as absent)."""
    window, since, until = (present(v) for v in (window, since, until))
    if window is not None and since is not None:
        raise InvalidRequestError(
            "Give either 'window' or 'since' (with an optional 'until'), not both.",
            param="window",
            code="conflicting_parameters",
        )
    end = parse_instant(until, param="until") if until is not None else _utc_now(now)
    if since is not None:
        start = parse_instant(since, param="since")
    else:
        width = parse_window(window if window is not None else DEFAULT_WINDOW)
        try:
            start = end - width
        except OverflowError:
            raise InvalidRequestError(
                f"Invalid until {until!r}: too early for a window of {width}.",
                param="until",
                code="invalid_datetime",
            ) from None
    if start >= end:
        raise InvalidRequestError(
            f"'since' ({start.isoformat()}) must be before 'until' ({end.isoformat()}).",
            param="since",
            code="invalid_range",
        )
    if end - start > MAX_WINDOW:
        raise InvalidRequestError(
            f"The range from 'since' to 'until' is longer than {MAX_WINDOW.days} days.",
            param="since",
            code="window_too_large",
        )
    return TimeRange(since=start, until=end)


def parse_bucket(bucket: str, time_range: TimeRange, *, param: str = "bucket") -> str:
    """A known bucket name whose width fits :data:`MAX_BUCKETS` times in the range."""
    name = bucket.strip()
    width = BUCKETS.get(name)
    if width is None:
        raise InvalidRequestError(
            f"Invalid bucket {bucket!r}: use one of {', '.join(BUCKETS)}.",
            param=param,
            code="invalid_bucket",
        )
    count = math.ceil(time_range.duration / width)
    if count > MAX_BUCKETS:
        wider = [n for n, w in BUCKETS.items() if math.ceil(time_range.duration / w) <= MAX_BUCKETS]
        hint = f" use bucket={wider[0]} or a shorter window" if wider else " use a shorter window"
        raise InvalidRequestError(
            f"Too many buckets: {count} {name}s (at most {MAX_BUCKETS});{hint}.",
            param=param,
            code="too_many_buckets",
        )
    return name


def _utc_now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)
