"""API-key management: creating, listing, showing and revoking keys, each change audited.

An admin manages every key; a developer only their own, never with a role, models or limits
beyond their own (the rules are in ``account_policy.py``). A key's plaintext is returned once,
at creation, and stored nowhere: the database keeps its keyed hash (``keys.py``). Revoking a
key evicts it from the verification cache (``key_verifier.py``) at once.

:class:`helixflow.security.accounts.AccountService` composes this class and exposes its
operations; it is kept apart because keys and users change for different reasons and by
different people, and the two together made one module too long to read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from helixflow.errors import InvalidRequestError, NotFoundError
from helixflow.security.account_policy import (
    as_utc,
    key_name,
    key_role_for_owner,
    key_view,
    may_see,
    require_role,
    within_own_rights,
)
from helixflow.security.audit_trail import Actor, AuditTrail
from helixflow.security.identity import KeyRecord, Principal, Role, UserRecord
from helixflow.security.key_verifier import KeyVerifier
from helixflow.security.keys import generate, key_hash, new_key_id
from helixflow.security_config import LimitSet
from helixflow.store.database import Database
from helixflow.store.repositories.api_keys import ApiKeyRepository
from helixflow.store.repositories.users import UserRepository


class KeyManagement:
    """The key operations of :class:`helixflow.security.accounts.AccountService`.

    ``on_created`` is called after each key created (the auth switch turns authentication on
    at once); ``now`` gives aware UTC datetimes.
    """

    def __init__(
        self,
        database: Database,
        keys: ApiKeyRepository,
        users: UserRepository,
        hash_key: bytes,
        *,
        verifier: KeyVerifier,
        trail: AuditTrail,
        now: Callable[[], datetime],
        on_created: Callable[[], None],
    ) -> None:
        self._database = database
        self._keys = keys
        self._users = users
        self._hash_key = hash_key
        self._verifier = verifier
        self._trail = trail
        self._now = now
        self._on_created = on_created

    async def create_key(
        self,
        name: str,
        *,
        owner_id: str | None = None,
        role: Role | None = None,
        allowed_models: Iterable[str] | None = None,
        limits: LimitSet | None = None,
        expires_at: datetime | None = None,
        actor: Actor,
    ) -> tuple[KeyRecord, str]:
        """A new key and its plaintext (shown once, stored nowhere).

        An admin may create a key for anyone (``owner_id``; None: no owner) with any role up
        to the owner's. A developer creates keys for themselves only, with a role, models and
        limits no wider than their own (403 otherwise)."""
        principal = actor.principal
        require_role(principal, "developer")
        name = key_name(name)
        limits = limits or LimitSet()
        models = None if allowed_models is None else frozenset(allowed_models)
        if principal.has_role("admin"):
            owner = None if owner_id is None else await self._owner(owner_id)
            owner_id = None if owner is None else owner.id
            key_role = key_role_for_owner(role, owner)
        else:
            owner_id, key_role, models, limits = within_own_rights(
                principal, owner_id, role, models, limits
            )
        now = self._now()
        if expires_at is not None and as_utc(expires_at) <= now:
            raise InvalidRequestError(
                "expires_at must be in the future.", param="expires_at", code="invalid_expiry"
            )
        plaintext, prefix = generate()
        record = KeyRecord(
            id=new_key_id(),
            name=name,
            prefix=prefix,
            role=key_role,
            owner_id=owner_id,
            allowed_models=models,
            limits=limits,
            expires_at=None if expires_at is None else as_utc(expires_at),
            created_at=now,
            created_by=actor.label,
        )
        async with self._database.engine.begin() as conn:
            created = await self._keys.create(
                record, key_hash(self._hash_key, plaintext), conn=conn
            )
            await self._trail.record(
                actor, "key.create", "api_key", created.id, None, key_view(created), conn
            )
        self._on_created()
        return created, plaintext

    async def list_keys(self, principal: Principal) -> list[KeyRecord]:
        """Every key for an admin; a user's own keys; for an owner-less key, itself."""
        if principal.has_role("admin"):
            return await self._keys.list()
        if principal.user_id is not None:
            return await self._keys.list(owner_id=principal.user_id)
        if principal.key_id is not None:
            key = await self._keys.get(principal.key_id)
            return [] if key is None else [key]
        return []

    async def get_key(self, key_id: str, principal: Principal) -> KeyRecord:
        """A key the principal may see (404 for any other, so as not to tell it exists)."""
        key = await self._keys.get(key_id)
        if key is None or not may_see(principal, key):
            raise NotFoundError(f"No API key '{key_id}'.", param="key_id", code="key_not_found")
        return key

    async def revoke_key(self, key_id: str, actor: Actor) -> KeyRecord:
        """Revoke a key the actor may see; a key revoked already is returned as it is."""
        key = await self.get_key(key_id, actor.principal)
        if key.revoked_at is not None:
            return key
        async with self._database.engine.begin() as conn:
            await self._keys.revoke(key.id, self._now(), conn=conn)
            revoked = await self._keys.get(key.id, conn=conn)
            if revoked is None:  # pragma: no cover - deleted meanwhile
                raise NotFoundError(f"No API key '{key_id}'.", param="key_id", code="key_not_found")
            await self._trail.record(
                actor, "key.revoke", "api_key", key.id, key_view(key), key_view(revoked), conn
            )
        self._verifier.evict(key_ids=[key.id])
        return revoked

    async def _owner(self, owner_id: str) -> UserRecord:
        user = await self._users.get(owner_id) or await self._users.get_by_username(owner_id)
        if user is None:
            raise InvalidRequestError(
                f"No user '{owner_id}' to own the key.", param="owner", code="user_not_found"
            )
        return user
