"""Security test fixtures: a fake clock, a closed port (the Redis fixtures are in
``tests/conftest.py``)."""

from __future__ import annotations

import socket

import pytest

from tests.security.factories import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """Epoch seconds, from :data:`tests.security.factories.T0`."""
    return FakeClock()


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
