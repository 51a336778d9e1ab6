"""Test doubles shared by the security tests (and the auth routes' tests): fake clocks that
move only when a test moves them, and users stored for the session tables to reference."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from helixflow.security.identity import UserRecord
from helixflow.store.database import Database
from helixflow.store.repositories.users import UserRepository

START = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
"""2024-05-01 10:00:00 UTC, a Wednesday: the start of every fake clock."""
T0 = START.timestamp()
""":data:`START` in epoch seconds."""


@dataclass
class FakeClock:
    """Epoch (or monotonic) seconds that move only when a test moves them."""

    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class WallClock:
    """Aware UTC datetimes that move only when a test moves them."""

    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def store_users(database: Database, *users: UserRecord) -> None:
    """Store ``users`` (refresh tokens and audit entries reference them)."""
    repo = UserRepository(database)
    for user in users:
        await repo.create(user, None)
