"""Security test fixtures: the Redis that CI provides (``.ci/run`` exports its URL), a fake
clock, and principals."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

T0 = 1_714_557_600.0
"""2024-05-01 10:00:00 UTC, a Wednesday: the start of every fake clock."""


@dataclass
class FakeClock:
    """Epoch seconds that move only when a test moves them."""

    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def redis_key_prefix() -> str:
    """A prefix no other test uses, so tests may share one Redis, even in parallel."""
    return f"helixflow-test:{uuid.uuid4().hex}:"


@pytest.fixture
def redis_url(redis_key_prefix: str) -> Iterator[str]:
    """The test Redis; keys under ``redis_key_prefix`` (only those) are deleted afterwards."""
    url = os.environ.get("HELIXFLOW_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    yield url
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=redis_key_prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
