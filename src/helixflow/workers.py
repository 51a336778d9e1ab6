"""Several worker processes behind one port: ``helixflow serve --workers N``.

Each worker is a whole server (its own models, router state and telemetry writer) built by
:func:`helixflow.app.app_from_environment` in a process uvicorn spawns; the settings reach it
through the environment. What must not be shared between processes gets a directory per
worker: the telemetry spool (numbered segment files) and the KV store's disk tier. A worker
claims the first free *slot* by locking ``slot-<i>.lock`` (the lock lives as long as the
process), so a restarted worker takes over a dead one's directories and replays its spool.
Metrics are summed across workers through prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from helixflow.config import Settings
from helixflow.errors import StartupError


@dataclass(slots=True)
class WorkerSlot:
    index: int
    directory: Path
    lock: IO[str]
    """Held open: the slot is this process's until it exits."""


def claim_slot(root: Path, slots: int) -> WorkerSlot:
    """The first slot under ``root`` no other live process holds."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(max(1, slots) * 2):  # room for workers restarting while others stop
        lock = (root / f"slot-{index}.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        directory = root / str(index)
        directory.mkdir(exist_ok=True)
        return WorkerSlot(index, directory, lock)
    raise StartupError(f"no free worker slot under {root} (more workers than {slots * 2}?)")


def worker_settings(settings: Settings, slot: WorkerSlot) -> Settings:
    """``settings`` with the spool and the KV disk tier in the slot's own directories."""
    telemetry = settings.telemetry.model_copy(
        update={"spool_dir": settings.spool_dir / f"worker-{slot.index}"}
    )
    kv_cache = settings.kv_cache.model_copy(
        update={"disk_dir": settings.kv_dir / f"worker-{slot.index}"}
    )
    return settings.model_copy(update={"telemetry": telemetry, "kv_cache": kv_cache})
