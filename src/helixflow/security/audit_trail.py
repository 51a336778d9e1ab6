"""Who changes accounts, and how each change is written to the audit log.

Every account operation (``accounts.py``, ``key_management.py``, ``privacy.py``) takes an
:class:`Actor`, checks what its principal may do, and records the change with
:class:`AuditTrail` in the same transaction as the change itself. They live here, apart from
the operations, so that each of those modules can use them without importing the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from helixflow.security.identity import ANONYMOUS, Principal
from helixflow.store.repositories.audit import AuditRepository


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs an action: the principal that is checked, the name the audit log gives."""

    principal: Principal
    name: str | None = None
    """The audit log's name for the actor; default the principal's (``user:alice``)."""
    request_id: str | None = None
    ip: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.principal.actor


CLI_ACTOR = Actor(ANONYMOUS, name="cli")
"""The command line: an administrator, named ``cli`` in the audit log."""
SYSTEM_ACTOR = Actor(ANONYMOUS, name="system")
"""The server itself (the bootstrap admin)."""


class AuditTrail:
    """Appends one audit entry per account change, stamped with ``now()`` and the actor's
    label, request id and address. ``before`` and ``after`` are public views (never a key, a
    hash, a password, an e-mail address or a display name)."""

    def __init__(self, audit: AuditRepository, now: Callable[[], datetime]) -> None:
        self._audit = audit
        self._now = now

    async def record(
        self,
        actor: Actor,
        action: str,
        target_type: str,
        target_id: str | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        conn: AsyncConnection | None,
    ) -> None:
        """Write the entry, inside ``conn``'s transaction when one is given."""
        await self._audit.append(
            actor.label,
            action,
            target_type,
            target_id,
            before,
            after,
            actor.request_id,
            actor.ip,
            at=self._now(),
            conn=conn,
        )
