"""Accounts: users, API keys, privacy export and deletion, each change in the audit log.

:class:`AccountService` is built once in the lifespan (``app.state.accounts``) and by the CLI.
It is the one entry point for all of it; the parts are in their own modules:

- **Keys** are verified on every request through a short-lived cache (``key_verifier.py``):
  a verified (or unknown) key is kept in memory for ``key_cache_s`` seconds (5), so the hot
  path rarely touches the database. Revoking a key, deleting or changing its owner through
  this service evicts it at once; on other replicas it stops working within ``key_cache_s``.
  ``last_used_at`` is written in batches, at most once a minute, by a background task. Keys
  are created, listed and revoked by ``key_management.py``.
- **Who may do what**: users and the audit log are the admins'; a developer manages their own
  keys only, never with a role, models or limits beyond their own (the rules and the public
  views of users and keys are in ``account_policy.py``).
- **Audit**: every change writes ``audit_log`` in the same transaction (``audit_trail.py``),
  with the actor (:attr:`Actor.label`), the target and public views of it before and after:
  never a key, a hash or a password, and no e-mail address or display name (the log is
  append-only, and a privacy deletion must leave no personal field behind in it but the user
  name the entries were written under).
- **Privacy** export and deletion (:meth:`AccountService.export_user_data`,
  :meth:`AccountService.delete_user_data`) are in ``privacy.py``, which says what each covers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypedDict

from helixflow.errors import ConfigurationError, InvalidRequestError, NotFoundError
from helixflow.security.account_policy import (
    check_display_name,
    check_email,
    check_role,
    check_username,
    lower_role,
    require_role,
    user_view,
)
from helixflow.security.audit_trail import CLI_ACTOR, SYSTEM_ACTOR, Actor, AuditTrail
from helixflow.security.identity import KeyRecord, Principal, Role, UserRecord
from helixflow.security.key_management import KeyManagement
from helixflow.security.key_verifier import KEY_CACHE_S, KeyVerifier
from helixflow.security.keys import KEY_HASH_PURPOSE, new_user_id
from helixflow.security.passwords import Passwords, check_password_policy
from helixflow.security.privacy import DeletionSummary, UserDataPrivacy
from helixflow.security.secret import derive
from helixflow.security_config import LimitSet, SecurityConfig
from helixflow.store.database import Database
from helixflow.store.repositories.api_keys import ApiKeyRepository
from helixflow.store.repositories.audit import AuditRepository
from helixflow.store.repositories.users import UsernameTakenError, UserRepository, UserUpdate
from helixflow.store.schema import utcnow

__all__ = [
    "CLI_ACTOR",
    "KEY_CACHE_S",
    "SYSTEM_ACTOR",
    "AccountService",
    "Actor",
    "DeletionSummary",
    "UserChanges",
]

log = logging.getLogger(__name__)


class UserChanges(TypedDict, total=False):
    """What :meth:`AccountService.update_user` may change (absent: unchanged)."""

    role: Role
    active: bool
    limits: LimitSet
    email: str | None
    display_name: str | None
    password: str | None
    """None: the user may no longer log in (keys only)."""


class AccountService:
    """Users, keys and the audit log over one database (see the module's docstring)."""

    def __init__(
        self,
        database: Database,
        secret: bytes,
        config: SecurityConfig,
        *,
        passwords: Passwords | None = None,
        key_cache_s: float = KEY_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.config = config
        self.users = UserRepository(database)
        self.keys = ApiKeyRepository(database)
        self.audit = AuditRepository(database)
        self.passwords = passwords or Passwords()
        self._now = now
        self._created_listeners: list[Callable[[], None]] = []
        hash_key = derive(secret, KEY_HASH_PURPOSE)
        self._trail = AuditTrail(self.audit, now)
        self._verifier = KeyVerifier(
            self.keys, self.users, hash_key, cache_s=key_cache_s, clock=clock, now=now
        )
        self._key_management = KeyManagement(
            database,
            self.keys,
            self.users,
            hash_key,
            verifier=self._verifier,
            trail=self._trail,
            now=now,
            on_created=self._credentials_created,
        )
        self._privacy = UserDataPrivacy(
            database,
            self.users,
            self.keys,
            self.audit,
            verifier=self._verifier,
            trail=self._trail,
            now=now,
        )

    @property
    def key_cache_s(self) -> float:
        """How long a verified key, or a user, is cached (0: not at all)."""
        return self._verifier.cache_s

    def on_credentials_created(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each key or user this service creates (the auth switch
        turns authentication on at once)."""
        self._created_listeners.append(listener)

    def _credentials_created(self) -> None:
        for listener in self._created_listeners:
            try:
                listener()
            except Exception:
                log.exception("a credentials-created listener failed")

    # --- keys: the hot path ------------------------------------------------------------------

    async def verify_key(self, plaintext: str) -> KeyRecord:
        """The key's record; AuthenticationError (401) with code ``invalid_api_key``,
        ``expired_api_key``, ``revoked_api_key`` or ``inactive_user`` (its owner is
        deactivated) otherwise."""
        key, _owner = await self._verifier.verify(plaintext)
        return key

    async def principal_for_key(self, plaintext: str) -> Principal:
        """What a request carrying ``plaintext`` acts as: the key's role, capped at its
        owner's, with the key's models and limits and the owner's limits."""
        key, owner = await self._verifier.verify(plaintext)
        role = key.role if owner is None else lower_role(key.role, owner.role)
        return Principal(
            kind="key",
            role=role,
            name=key.name,
            user_id=key.owner_id,
            key_id=key.id,
            allowed_models=key.allowed_models,
            key_limits=key.limits,
            user_limits=None if owner is None else owner.limits,
        )

    async def flush(self) -> None:
        """Write the pending ``last_used_at`` times now."""
        await self._verifier.flush()

    async def close(self) -> None:
        """Wait for a flush under way and write what is pending (at shutdown)."""
        await self._verifier.close()

    # --- keys: management (key_management.py) ------------------------------------------------

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
        return await self._key_management.create_key(
            name,
            owner_id=owner_id,
            role=role,
            allowed_models=allowed_models,
            limits=limits,
            expires_at=expires_at,
            actor=actor,
        )

    async def list_keys(self, principal: Principal) -> list[KeyRecord]:
        """Every key for an admin; a user's own keys; for an owner-less key, itself."""
        return await self._key_management.list_keys(principal)

    async def get_key(self, key_id: str, principal: Principal) -> KeyRecord:
        """A key the principal may see (404 for any other, so as not to tell it exists)."""
        return await self._key_management.get_key(key_id, principal)

    async def revoke_key(self, key_id: str, actor: Actor) -> KeyRecord:
        """Revoke a key the actor may see; a key revoked already is returned as it is."""
        return await self._key_management.revoke_key(key_id, actor)

    # --- users -------------------------------------------------------------------------------

    async def create_user(
        self,
        username: str,
        password: str | None,
        role: Role,
        actor: Actor,
        *,
        email: str | None = None,
        display_name: str | None = None,
        limits: LimitSet | None = None,
        active: bool = True,
    ) -> UserRecord:
        """A new user (admins only). ``password`` None: a user who only owns keys."""
        require_role(actor.principal, "admin")
        check_username(username)
        check_role(role)
        check_email(email)
        check_display_name(display_name)
        password_hash = None
        if password is not None:
            check_password_policy(password)
            password_hash = await self.passwords.hash_async(password)
        record = UserRecord(
            id=new_user_id(),
            username=username,
            role=role,
            active=active,
            email=email,
            display_name=display_name,
            limits=limits or LimitSet(),
        )
        try:
            async with self.database.engine.begin() as conn:
                user = await self.users.create(record, password_hash, conn=conn)
                after = user_view(user) | {"has_password": password_hash is not None}
                await self._trail.record(actor, "user.create", "user", user.id, None, after, conn)
        except UsernameTakenError:
            raise InvalidRequestError(
                f"The user name '{username}' is taken.", param="username", code="username_taken"
            ) from None
        self._credentials_created()
        return user

    async def authenticate(
        self, username: str, password: str, *, request_id: str | None = None, ip: str | None = None
    ) -> UserRecord | None:
        """The user when the password is theirs and they are active, else None. Takes as
        long for an unknown name as for a known one; a success is audited (``user.login``)."""
        found = None
        if 0 < len(username) <= 64 and len(password) <= 4096:
            found = await self.users.credentials(username)
        if found is None:
            await self.passwords.verify_async(None, password[:4096])
            return None
        user, stored = found
        if not await self.passwords.verify_async(stored, password) or not user.active:
            return None
        if stored is not None and self.passwords.needs_rehash(stored):
            rehashed = await self.passwords.hash_async(password)
            await self.users.update(user.id, {"password_hash": rehashed})
        now = self._now()
        await self.users.touch_login(user.id, now)
        self._verifier.forget_user(user.id)
        await self.audit.append(
            f"user:{user.username}", "user.login", "user", user.id, request_id=request_id, ip=ip
        )
        return replace(user, last_login_at=now)

    async def get_user(self, user_id: str) -> UserRecord | None:
        """The user, or None: cached for ``key_cache_s`` like keys (the auth middleware asks
        for a key's owner or a token's user on every request); changes made through this
        service evict it at once."""
        return await self._verifier.get_user(user_id)

    async def require_user(self, user_id: str) -> UserRecord:
        """The user as stored now (not cached); 404 ``user_not_found`` when there is none."""
        user = await self.users.get(user_id)
        if user is None:
            raise NotFoundError(f"No user '{user_id}'.", param="user_id", code="user_not_found")
        return user

    async def find_user(self, ref: str) -> UserRecord:
        """A user by id or, failing that, by name (404 when neither matches)."""
        user = await self.users.get(ref) or await self.users.get_by_username(ref)
        if user is None:
            raise NotFoundError(f"No user '{ref}'.", param="user", code="user_not_found")
        return user

    async def list_users(self, *, limit: int = 1000, offset: int = 0) -> list[UserRecord]:
        return await self.users.list(limit=limit, offset=offset)

    async def update_user(self, user_id: str, changes: UserChanges, actor: Actor) -> UserRecord:
        """Change a user's role, state, limits, personal fields or password (admins only).
        The last active admin cannot be demoted or deactivated."""
        require_role(actor.principal, "admin")
        user = await self.require_user(user_id)
        update: UserUpdate = {}
        if "role" in changes:
            check_role(changes["role"])
            update["role"] = changes["role"]
        if "active" in changes:
            update["active"] = changes["active"]
        if "limits" in changes:
            update["limits"] = changes["limits"]
        if "email" in changes:
            check_email(changes["email"])
            update["email"] = changes["email"]
        if "display_name" in changes:
            check_display_name(changes["display_name"])
            update["display_name"] = changes["display_name"]
        if "password" in changes:
            password = changes["password"]
            if password is not None:
                check_password_policy(password)
            update["password_hash"] = (
                None if password is None else await self.passwords.hash_async(password)
            )
        if not update:
            return user
        demoted = update.get("role", user.role) != "admin" or not update.get("active", user.active)
        if demoted:
            await self._keep_an_admin(user)
        async with self.database.engine.begin() as conn:
            updated = await self.users.update(user.id, update, conn=conn)
            if updated is None:  # pragma: no cover - deleted meanwhile
                raise NotFoundError(f"No user '{user_id}'.", param="user_id", code="user_not_found")
            after = user_view(updated)
            if "password_hash" in update:
                after["password_changed"] = True
            await self._trail.record(
                actor, "user.update", "user", user.id, user_view(user), after, conn
            )
        self._verifier.evict(owner_id=user.id)
        return updated

    # --- privacy (privacy.py) ----------------------------------------------------------------

    async def delete_user_data(self, user_id: str, actor: Actor) -> DeletionSummary:
        """Privacy deletion (admins only): the user's keys, personal fields and row (see
        ``privacy.py``), audited as ``user.delete`` without personal fields."""
        require_role(actor.principal, "admin")
        user = await self.require_user(user_id)
        await self._keep_an_admin(user)
        return await self._privacy.delete(user, actor)

    async def export_user_data(self, user_id: str, actor: Actor | None = None) -> dict[str, Any]:
        """Everything stored about a user, JSON-ready: their fields, keys (without hashes),
        what their requests amounted to and the audit entries about them. Audited
        (``user.export``) when an actor is given."""
        if actor is not None:
            require_role(actor.principal, "admin")
        user = await self.require_user(user_id)
        return await self._privacy.export(user, actor)

    # --- setup -------------------------------------------------------------------------------

    async def ensure_bootstrap_admin(self) -> UserRecord | None:
        """Create ``security.bootstrap_admin`` when no user exists and a password is
        configured; returns the new admin, or None when there was nothing to do."""
        if await self.users.count() > 0:
            return None
        bootstrap = self.config.bootstrap_admin
        try:
            password = bootstrap.password()
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        if password is None:
            return None
        try:
            check_password_policy(password)
        except InvalidRequestError as exc:
            raise ConfigurationError(f"security.bootstrap_admin: {exc.message}") from exc
        try:
            user = await self.create_user(bootstrap.username, password, "admin", SYSTEM_ACTOR)
        except InvalidRequestError as exc:
            if exc.code == "username_taken":  # another replica was first
                return None
            raise ConfigurationError(f"security.bootstrap_admin: {exc.message}") from exc
        log.info("created the bootstrap admin %r", user.username)
        return user

    async def any_credentials(self) -> bool:
        """True once any user or any unrevoked key exists: authentication is then on."""
        return await credentials_exist(self.users, self.keys)

    # --- helpers -----------------------------------------------------------------------------

    async def _keep_an_admin(self, user: UserRecord) -> None:
        if user.role != "admin" or not user.active:
            return
        if await self.users.count(role="admin", active_only=True) <= 1:
            raise InvalidRequestError(
                f"'{user.username}' is the last active admin; make another admin first.",
                param="user_id",
                code="last_admin",
            )


async def credentials_exist(users: UserRepository, keys: ApiKeyRepository) -> bool:
    """Whether any user or any unrevoked API key exists (the switch for ``security.auth:
    auto``); ``serve`` asks before binding, the running server through AccountService."""
    return await users.count() > 0 or await keys.any_unrevoked()
