"""Telemetry events: rows as the database should see them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from helixflow.store.telemetry.events import RoutingEvent, event_from_record
from tests.store.factories import inference_event as event


def test_event_rows_are_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    local = event(1)
    local.created_at = datetime(2026, 11, 23, 15, 0, tzinfo=paris)
    assert local.row()["created_at"] == datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
    naive = event(2)
    naive.created_at = datetime(2026, 11, 23, 14, 0)
    assert naive.row()["created_at"] == datetime(2026, 11, 23, 14, 0, tzinfo=UTC)


def test_long_strings_are_cut_to_their_column() -> None:
    long = event(1)
    long.requested_model = "m" * 1000
    long.error_code = "x" * 1000
    row = long.row()
    assert len(row["requested_model"]) == 256
    assert len(row["error_code"]) == 64
    reason = RoutingEvent(request_id="r", strategy="s", reason="why " * 1000).row()["reason"]
    assert len(reason) == 1024


def test_records_from_another_release_are_refused() -> None:
    with pytest.raises(KeyError):
        event_from_record("teleport", {"request_id": "r", "created_at": "2026-11-23T00:00:00"})
    with pytest.raises(TypeError):
        event_from_record(
            "inference", {"request_id": "r", "created_at": "2026-11-23T00:00:00", "bogus": 1}
        )
