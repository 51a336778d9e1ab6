"""The safe default: no unauthenticated server on a network address.

With ``security.auth: auto`` and no API key or user yet, authentication is off, which is only
allowed while the server listens on a loopback address; ``auth: off`` likewise. Anywhere else
``serve`` refuses to start and says how to create the first key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from helixflow.errors import ConfigurationError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def check_exposure(
    host: str, mode: str, credentials_exist: Callable[[], Awaitable[bool]]
) -> None:
    """Raise :class:`ConfigurationError` when the server would listen on ``host`` without
    authentication."""
    if is_loopback(host) or mode == "required":
        return
    if mode == "off":
        raise ConfigurationError(
            f"security.auth is off, but the server would listen on {host}, which is not a "
            "loopback address. Turn authentication on (security.auth: auto or required) or "
            "bind to 127.0.0.1."
        )
    if not await credentials_exist():
        raise ConfigurationError(
            f"No API key or user exists yet, so requests would not be authenticated, and the "
            f"server would listen on {host}, which is not a loopback address. Create a key "
            "first (`helixflow keys create --name admin`), or set HELIXFLOW_ADMIN_PASSWORD to "
            "create the bootstrap admin, or bind to 127.0.0.1."
        )
