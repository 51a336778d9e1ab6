"""The disk spool: ordered, durable, survives restarts, tolerates a torn last line."""

from __future__ import annotations

from pathlib import Path

from helixflow.store.telemetry.events import RoutingEvent, TelemetryEvent
from helixflow.store.telemetry.spool import Spool
from tests.store.factories import inference_event as event


def read_all(spool: Spool) -> list[TelemetryEvent]:
    return [e for path in spool.segments() for batch in spool.read(path, 7) for e in batch]


def test_round_trip_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    events: list[TelemetryEvent] = [event(i) for i in range(20)]
    events.append(
        RoutingEvent(request_id="req-0", strategy="weighted", candidates=[{"t": "a", "s": 0.5}])
    )
    spool.append(events[:10])
    spool.append(events[10:])
    assert read_all(spool) == events


def test_segments_rotate_and_are_removed_one_by_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=4096)
    for i in range(100):
        spool.append([event(i)])
    paths = spool.segments()
    assert len(paths) > 3
    spool.remove(paths[0])
    remaining = read_all(spool)
    assert [e.request_id for e in remaining] == [f"req-{i:06d}" for i in range(100)][
        -len(remaining) :
    ]


def test_a_new_spool_continues_after_the_old_segments(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.append([event(1)])
    first.close()
    second = Spool(tmp_path)
    second.append([event(2)])
    assert [e.request_id for e in read_all(second)] == ["req-000001", "req-000002"]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([event(1), event(2)])
    (path,) = spool.segments()
    with path.open("ab") as handle:
        handle.write(b'{"kind": "inference", "data": {"request_id": "half')
    assert [e.request_id for e in read_all(spool)] == ["req-000001", "req-000002"]


def test_garbage_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([event(1)])
    (path,) = spool.segments()
    with path.open("ab") as handle:
        handle.write(b'{"kind": "unknown", "data": {}}\nnot json\n')
    spool.append([event(2)])
    assert [e.request_id for e in read_all(spool)] == ["req-000001", "req-000002"]


def test_size_and_empty(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync="never")
    assert spool.empty
    spool.append([event(1)])
    assert spool.size_bytes > 0
    for path in spool.segments():
        spool.remove(path)
    assert spool.empty
