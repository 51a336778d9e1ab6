"""Window and range parsing of the analytics API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from helixflow.api.admin.windows import (
    MAX_WINDOW,
    TimeRange,
    parse_bucket,
    parse_instant,
    parse_window,
    resolve_range,
)
from helixflow.errors import InvalidRequestError

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("90d", timedelta(days=90)),
        ("2w", timedelta(weeks=2)),
        ("30s", timedelta(seconds=30)),
        ("1h30m", timedelta(minutes=90)),
        (" 6h ", timedelta(hours=6)),
    ],
)
def test_parse_window(text: str, expected: timedelta) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "invalid_window"),
        ("h", "invalid_window"),
        ("24", "invalid_window"),
        ("1.5h", "invalid_window"),
        ("-1h", "invalid_window"),
        ("1y", "invalid_window"),
        ("24H", "invalid_window"),
        ("1 h", "invalid_window"),
        ("\uff11h", "invalid_window"),  # a full-width digit one
        ("9999999999d", "invalid_window"),
        ("0m", "invalid_window"),
        ("91d", "window_too_large"),
        ("13w", "window_too_large"),
        ("90d1s", "window_too_large"),
    ],
)
def test_parse_window_refuses(text: str, code: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_window(text)
    assert info.value.param == "window"
    assert info.value.code == code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00+00:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        # '+' decoded as a space from an unencoded query string
        ("2024-05-01T12:00:00 02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00.250 0200", datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=UTC)),
        ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),  # naive: UTC
        ("2024-05-01 10:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
    ],
)
def test_parse_instant(text: str, expected: datetime) -> None:
    parsed = parse_instant(text, param="since")
    assert parsed == expected
    assert parsed.tzinfo == UTC


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "2024-05-01T25:00", "1714557600", ""])
def test_parse_instant_refuses(text: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_instant(text, param="until")
    assert info.value.param == "until"


def test_default_range_is_the_last_day() -> None:
    assert resolve_range(now=NOW) == TimeRange(NOW - timedelta(hours=24), NOW)
    assert resolve_range(window="", since=" ", until=None, now=NOW) == resolve_range(now=NOW)


def test_window_ends_now_or_at_until() -> None:
    assert resolve_range(window="15m", now=NOW) == TimeRange(NOW - timedelta(minutes=15), NOW)
    until = datetime(2024, 4, 1, tzinfo=UTC)
    got = resolve_range(window="1h", until="2024-04-01T00:00:00Z", now=NOW)
    assert got == TimeRange(until - timedelta(hours=1), until)
    # until alone: the default window before it
    got = resolve_range(until="2024-04-01T00:00:00Z", now=NOW)
    assert got == TimeRange(until - timedelta(hours=24), until)


def test_explicit_since_and_until() -> None:
    got = resolve_range(since="2024-04-01T00:00:00Z", until="2024-04-02T06:00:00+02:00", now=NOW)
    assert got == TimeRange(datetime(2024, 4, 1, tzinfo=UTC), datetime(2024, 4, 2, 4, tzinfo=UTC))
    assert got.duration == timedelta(hours=28)
    # since alone ends now
    got = resolve_range(since="2024-05-01T11:00:00Z", now=NOW)
    assert got == TimeRange(datetime(2024, 5, 1, 11, tzinfo=UTC), NOW)


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"window": "1h", "since": "2024-05-01T00:00:00Z"}, "window", "conflicting_parameters"),
        ({"window": "banana"}, "window", "invalid_window"),
        ({"window": "100d"}, "window", "window_too_large"),
        ({"since": "nope"}, "since", "invalid_datetime"),
        ({"until": "nope"}, "until", "invalid_datetime"),
        (
            {"since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"},
            "since",
            "invalid_range",
        ),
        (
            {"since": "2024-05-01T00:00:00Z", "until": "2024-05-01T00:00:00Z"},
            "since",
            "invalid_range",
        ),
        ({"since": "2024-06-01T00:00:00Z"}, "since", "invalid_range"),  # after now
        ({"since": "2023-01-01T00:00:00Z"}, "since", "window_too_large"),
        ({"until": "0001-01-01T01:00:00Z"}, "until", "invalid_datetime"),
    ],
)
def test_resolve_range_refuses(kwargs: dict[str, str], param: str, code: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        resolve_range(now=NOW, **kwargs)
    assert info.value.param == param
    assert info.value.code == code
    assert info.value.status_code == 400


def test_longest_range_is_accepted() -> None:
    got = resolve_range(since=(NOW - MAX_WINDOW).isoformat(), now=NOW)
    assert got.duration == MAX_WINDOW


def day(hours: float) -> TimeRange:
    return TimeRange(NOW - timedelta(hours=hours), NOW)


@pytest.mark.parametrize(
    ("bucket", "hours"),
    [("minute", 1), ("minute", 24), ("hour", 24), ("hour", 60 * 24), ("day", 90 * 24)],
)
def test_parse_bucket(bucket: str, hours: float) -> None:
    assert parse_bucket(bucket, day(hours)) == bucket


@pytest.mark.parametrize(
    ("bucket", "hours", "code", "hint"),
    [
        ("week", 1, "invalid_bucket", "minute, hour, day"),
        ("", 1, "invalid_bucket", "minute"),
        ("Minute", 1, "invalid_bucket", "minute"),
        ("minute", 24.01, "too_many_buckets", "bucket=hour"),
        ("hour", 61 * 24, "too_many_buckets", "bucket=day"),
    ],
)
def test_parse_bucket_refuses(bucket: str, hours: float, code: str, hint: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_bucket(bucket, day(hours))
    assert info.value.param == "bucket"
    assert info.value.code == code
    assert hint in info.value.message
