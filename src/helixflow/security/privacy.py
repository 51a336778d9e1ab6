"""A user's data on request: everything stored about them (export), or all of it gone (delete).

- **Export** gathers the user's fields (personal ones included), their keys (without hashes),
  what their requests amounted to, per model, and the audit entries about them.
- **Deletion** deletes the user's row: their keys and refresh tokens go with it (cascade), the
  personal fields their requests carried (the client's ``user`` field and request id) are
  cleared, and the request rows stay for accounting under the now meaningless ``usr_...`` id.
  The name is free for reuse. No prompts are stored anywhere, so there are none to delete.
  The audit log is append-only and keeps its entries about the user, which hold no personal
  field but the user name they were written under.

Who may ask, and that the last active admin is not deleted, is checked by
:class:`helixflow.security.accounts.AccountService` before it calls :class:`UserDataPrivacy`;
kept apart because it is the one place that reads across users, keys, requests and the audit
log at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from helixflow.security.account_policy import iso, key_view, user_view
from helixflow.security.audit_trail import Actor, AuditTrail
from helixflow.security.identity import UserRecord
from helixflow.security.key_verifier import KeyVerifier
from helixflow.store.database import Database
from helixflow.store.repositories.api_keys import ApiKeyRepository
from helixflow.store.repositories.audit import AuditRepository
from helixflow.store.repositories.users import UserRepository

EXPORTED_AUDIT_ENTRIES = 1000
"""The most recent audit entries about the user an export includes."""


@dataclass(frozen=True, slots=True)
class DeletionSummary:
    """What a privacy deletion removed."""

    user_id: str
    keys_deleted: int
    requests_scrubbed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "deleted": True,
            "keys_deleted": self.keys_deleted,
            "requests_scrubbed": self.requests_scrubbed,
        }


class UserDataPrivacy:
    """Exports and deletes one user's data (see the module's docstring); the caller has
    checked that the actor may."""

    def __init__(
        self,
        database: Database,
        users: UserRepository,
        keys: ApiKeyRepository,
        audit: AuditRepository,
        *,
        verifier: KeyVerifier,
        trail: AuditTrail,
        now: Callable[[], datetime],
    ) -> None:
        self._database = database
        self._users = users
        self._keys = keys
        self._audit = audit
        self._verifier = verifier
        self._trail = trail
        self._now = now

    async def delete(self, user: UserRecord, actor: Actor) -> DeletionSummary:
        """Delete ``user``'s keys, personal fields and row in one transaction, audited as
        ``user.delete`` without personal fields; evicts them from the key cache."""
        async with self._database.engine.begin() as conn:
            keys = await self._keys.list(owner_id=user.id, conn=conn)
            key_ids = [k.id for k in keys]
            deleted = await self._keys.delete_by_owner(user.id, conn=conn)
            scrubbed = await self._users.scrub_requests(user.id, key_ids, conn=conn)
            await self._users.delete(user.id, conn=conn)
            summary = DeletionSummary(user.id, deleted, scrubbed)
            before = {"id": user.id, "role": user.role, "active": user.active, "keys": key_ids}
            await self._trail.record(
                actor, "user.delete", "user", user.id, before, summary.to_dict(), conn
            )
        self._verifier.evict(key_ids=key_ids, owner_id=user.id)
        return summary

    async def export(self, user: UserRecord, actor: Actor | None) -> dict[str, Any]:
        """Everything stored about ``user``, JSON-ready; audited (``user.export``) when an
        actor is given."""
        keys = await self._keys.list(owner_id=user.id)
        usage = await self._users.usage_summary(user.id, [k.id for k in keys])
        audit = await self._audit.list(
            target_type="user", target_id=user.id, limit=EXPORTED_AUDIT_ENTRIES
        )
        if actor is not None:
            await self._trail.record(actor, "user.export", "user", user.id, None, None, None)
        return {
            "exported_at": self._now().isoformat(),
            "user": user_view(user, personal=True),
            "api_keys": [key_view(k) for k in keys],
            "usage": {
                "requests": usage.requests,
                "errors": usage.errors,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cost_usd": usage.cost_usd,
                "first_request_at": iso(usage.first_request_at),
                "last_request_at": iso(usage.last_request_at),
                "by_model": [
                    {
                        "model": m.model,
                        "requests": m.requests,
                        "prompt_tokens": m.prompt_tokens,
                        "completion_tokens": m.completion_tokens,
                        "cost_usd": m.cost_usd,
                    }
                    for m in usage.by_model
                ],
            },
            "audit": [entry.to_dict() for entry in audit],
        }
