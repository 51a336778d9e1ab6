"""An append-only disk spool for events the database could not take.

Segments are JSON-lines files named by an increasing sequence number. The writer appends
whole batches (one ``write`` and, by policy, one ``fsync`` per batch) to the open segment;
replay seals it, reads the segments oldest first, and deletes each one only after all its
rows are committed. Inserts are idempotent on request id, so a crash anywhere in between
replays a segment again without duplicating a row. A torn last line (a crash mid-write) is
skipped with a warning: its batch had not been acknowledged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

import orjson

from helixflow.store.telemetry.events import TelemetryEvent, event_from_record

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 16 * 1024 * 1024,
        fsync: Literal["always", "interval", "never"] = "always",
        fsync_interval_s: float = 1.0,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self._file: IO[bytes] | None = None
        self._file_size = 0
        self._last_fsync = 0.0
        self._unsynced = False
        directory.mkdir(parents=True, exist_ok=True)
        self._next_seq = max((self._seq(p) for p in self._segment_paths()), default=0) + 1

    @staticmethod
    def _seq(path: Path) -> int:
        return int(path.stem)

    def _segment_paths(self) -> list[Path]:
        paths = [p for p in self.directory.glob(f"*{SUFFIX}") if p.stem.isdigit()]
        return sorted(paths, key=self._seq)

    # --- writing ---------------------------------------------------------------------------

    def append(self, events: list[TelemetryEvent]) -> None:
        """Write ``events`` durably (per the fsync policy) at the end of the spool."""
        if not events:
            return
        data = b"".join(
            orjson.dumps({"kind": e.kind, "data": e}, option=orjson.OPT_APPEND_NEWLINE)
            for e in events
        )
        handle = self._open()
        handle.write(data)
        handle.flush()
        self._file_size += len(data)
        self._unsynced = True
        self._sync_by_policy()
        if self._file_size >= self.segment_bytes:
            self.seal()

    def _open(self) -> IO[bytes]:
        if self._file is None:
            path = self.directory / f"{self._next_seq:012d}{SUFFIX}"
            self._next_seq += 1
            self._file = path.open("ab")
            self._file_size = path.stat().st_size
            self._fsync_directory()
        return self._file

    def _sync_by_policy(self) -> None:
        now = time.monotonic()
        due = self.fsync == "always" or (
            self.fsync == "interval" and now - self._last_fsync >= self.fsync_interval_s
        )
        if due:
            self.sync()

    def sync(self) -> None:
        if self._file is not None and self._unsynced:
            os.fsync(self._file.fileno())
            self._unsynced = False
            self._last_fsync = time.monotonic()

    def seal(self) -> None:
        """Close the open segment (synced whatever the policy); the next append starts one."""
        if self._file is not None:
            self._file.flush()
            if self.fsync != "never":
                self.sync()
            self._file.close()
            self._file = None
            self._file_size = 0

    def _fsync_directory(self) -> None:
        if self.fsync == "never":
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- replay ----------------------------------------------------------------------------

    def segments(self) -> list[Path]:
        """Every segment, oldest first, after sealing the open one."""
        self.seal()
        return self._segment_paths()

    def read(self, path: Path, batch_size: int) -> Iterator[list[TelemetryEvent]]:
        """The events of one segment in order, ``batch_size`` at a time."""
        batch: list[TelemetryEvent] = []
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                event = self._parse(path, number, line)
                if event is None:
                    continue
                batch.append(event)
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    @staticmethod
    def _parse(path: Path, number: int, line: bytes) -> TelemetryEvent | None:
        if not line.endswith(b"\n"):
            log.warning("spool %s: skipping torn last line %d (a crash mid-write)", path, number)
            return None
        try:
            record = orjson.loads(line)
            return event_from_record(record["kind"], record["data"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error("spool %s: skipping unreadable line %d: %s", path, number, exc)
            return None

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._fsync_directory()

    # --- figures ---------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._segment_paths() if p.exists())

    @property
    def empty(self) -> bool:
        return self.size_bytes == 0

    def close(self) -> None:
        self.seal()
