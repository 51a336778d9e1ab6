"""Router test fixtures: the Redis that CI provides (``.ci/run`` exports its URL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


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
