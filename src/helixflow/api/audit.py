"""Recording an administrative action from an endpoint: who, what, before and after."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import Request

from helixflow.api.auth import principal_of

log = logging.getLogger(__name__)


async def audit(
    request: Request,
    action: str,
    target_type: str,
    target_id: str | None = None,
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> None:
    """Append to the audit log as the request's principal (a no-op without accounts). A
    failure to write is logged: the action itself has happened."""
    accounts = getattr(request.app.state, "accounts", None)
    if accounts is None:
        return
    client = request.client
    try:
        await accounts.audit.append(
            principal_of(request).actor,
            action,
            target_type,
            target_id,
            before,
            after,
            request_id=request.scope.get("state", {}).get("request_id"),
            ip=client.host if client is not None else None,
        )
    except Exception as exc:
        log.error("could not write the audit log for %s on %s: %s", action, target_id, exc)
