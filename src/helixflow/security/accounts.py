"""Accounts: users, API keys, privacy export and deletion, each change in the audit log.

:class:`AccountService` is built once in the lifespan (``app.state.accounts``) and by the CLI.

- **Keys** are verified on every request: a verified (or unknown) key is cached in memory for
  ``key_cache_s`` seconds (5), so the hot path rarely touches the database. Revoking a key,
  deleting or changing its owner through this service evicts it at once; on other replicas it
  stops working within ``key_cache_s``. ``last_used_at`` is written in batches, at most once a
  minute, by a background task.
- **Who may do what**: users and the audit log are the admins'; a developer manages their own
  keys only, never with a role, models or limits beyond their own (the rules and the public
  views of users and keys are in ``account_policy.py``).
- **Audit**: every change writes ``audit_log`` in the same transaction, with the actor
  (:attr:`Actor.label`), the target and public views of it before and after: never a key, a
  hash or a password, and no e-mail address or display name (the log is append-only, and a
  privacy deletion must leave no personal field behind in it but the user name the entries
  were written under).
- **Privacy deletion** (:meth:`AccountService.delete_user_data`) deletes the user's row: their
  keys and refresh tokens go with it (cascade), the personal fields their requests carried
  (the client's ``user`` field and request id) are cleared, and the request rows stay for
  accounting under the now meaningless ``usr_...`` id. The name is free for reuse. No prompts
  are stored anywhere, so there are none to delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypedDict

from helixflow.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
)
from helixflow.security.account_policy import (
    as_utc,
    check_display_name,
    check_email,
    check_role,
    check_username,
    iso,
    key_name,
    key_role_for_owner,
    key_view,
    lower_role,
    may_see,
    require_role,
    user_view,
    within_own_rights,
)
from helixflow.security.identity import ANONYMOUS, KeyRecord, Principal, Role, UserRecord
from helixflow.security.keys import (
    KEY_HASH_PURPOSE,
    generate,
    key_hash,
    looks_like_key,
    new_key_id,
    new_user_id,
)
from helixflow.security.passwords import Passwords, check_password_policy
from helixflow.security.secret import derive
from helixflow.security_config import LimitSet, SecurityConfig
from helixflow.store.database import Database
from helixflow.store.repositories.api_keys import ApiKeyRepository
from helixflow.store.repositories.audit import AuditRepository
from helixflow.store.repositories.users import UsernameTakenError, UserRepository, UserUpdate
from helixflow.store.schema import utcnow

log = logging.getLogger(__name__)

KEY_CACHE_S = 5.0
KEY_CACHE_MAX = 10_000
TOUCH_INTERVAL_S = 60.0


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


class UserChanges(TypedDict, total=False):
    """What :meth:`AccountService.update_user` may change (absent: unchanged)."""

    role: Role
    active: bool
    limits: LimitSet
    email: str | None
    display_name: str | None
    password: str | None
    """None: the user may no longer log in (keys only)."""


@dataclass(frozen=True, slots=True)
class DeletionSummary:
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


@dataclass(frozen=True, slots=True)
class _Cached:
    key: KeyRecord | None
    owner: UserRecord | None
    until: float


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
        self.key_cache_s = key_cache_s
        self._hash_key = derive(secret, KEY_HASH_PURPOSE)
        self._clock = clock
        self._now = now
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._user_cache: OrderedDict[str, tuple[UserRecord | None, float]] = OrderedDict()
        self._pending_use: dict[str, datetime] = {}
        self._last_flush: float | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._created_listeners: list[Callable[[], None]] = []

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
        key, _owner = await self._verified(plaintext)
        return key

    async def principal_for_key(self, plaintext: str) -> Principal:
        """What a request carrying ``plaintext`` acts as: the key's role, capped at its
        owner's, with the key's models and limits and the owner's limits."""
        key, owner = await self._verified(plaintext)
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

    async def _verified(self, plaintext: str) -> tuple[KeyRecord, UserRecord | None]:
        if not looks_like_key(plaintext):
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        entry = await self._lookup(key_hash(self._hash_key, plaintext))
        key = entry.key
        if key is None:
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        if key.revoked_at is not None:
            raise AuthenticationError("This API key has been revoked.", code="revoked_api_key")
        now = self._now()
        if key.expires_at is not None and key.expires_at <= now:
            raise AuthenticationError("This API key has expired.", code="expired_api_key")
        if key.owner_id is not None and (entry.owner is None or not entry.owner.active):
            raise AuthenticationError(
                "The owner of this API key is deactivated.", code="inactive_user"
            )
        self._mark_used(key.id, now)
        return key, entry.owner

    async def _lookup(self, hashed: str) -> _Cached:
        tick = self._clock()
        cached = self._cache.get(hashed)
        if cached is not None and cached.until > tick:
            return cached
        key = await self.keys.get_by_hash(hashed)
        owner = None
        if key is not None and key.owner_id is not None:
            owner = await self.get_user(key.owner_id)
        entry = _Cached(key, owner, tick + self.key_cache_s)
        if self.key_cache_s > 0:
            self._cache[hashed] = entry
            self._cache.move_to_end(hashed)
            while len(self._cache) > KEY_CACHE_MAX:
                self._cache.popitem(last=False)
        return entry

    def _evict(self, *, key_ids: Iterable[str] = (), owner_id: str | None = None) -> None:
        if owner_id is not None:
            self._user_cache.pop(owner_id, None)
        ids = set(key_ids)
        for hashed, entry in list(self._cache.items()):
            key = entry.key
            if key is not None and (
                key.id in ids or (owner_id is not None and key.owner_id == owner_id)
            ):
                del self._cache[hashed]

    def _mark_used(self, key_id: str, at: datetime) -> None:
        self._pending_use[key_id] = at
        tick = self._clock()
        due = self._last_flush is None or tick - self._last_flush >= TOUCH_INTERVAL_S
        if due and (self._flush_task is None or self._flush_task.done()):
            self._last_flush = tick
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_quietly())

    async def flush(self) -> None:
        """Write the pending ``last_used_at`` times now."""
        batch, self._pending_use = self._pending_use, {}
        try:
            await self.keys.touch(batch)
        except BaseException:
            for key_id, at in batch.items():  # keep them for the next flush
                self._pending_use.setdefault(key_id, at)
            raise

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except Exception as exc:
            log.warning("could not record when API keys were last used: %s", exc)

    async def close(self) -> None:
        """Wait for a flush under way and write what is pending (at shutdown)."""
        if self._flush_task is not None:
            with contextlib.suppress(Exception):
                await self._flush_task
        await self._flush_quietly()

    # --- keys: management --------------------------------------------------------------------

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
        async with self.database.engine.begin() as conn:
            created = await self.keys.create(record, key_hash(self._hash_key, plaintext), conn=conn)
            await self._audit(
                actor, "key.create", "api_key", created.id, None, key_view(created), conn
            )
        self._credentials_created()
        return created, plaintext

    async def list_keys(self, principal: Principal) -> list[KeyRecord]:
        """Every key for an admin; a user's own keys; for an owner-less key, itself."""
        if principal.has_role("admin"):
            return await self.keys.list()
        if principal.user_id is not None:
            return await self.keys.list(owner_id=principal.user_id)
        if principal.key_id is not None:
            key = await self.keys.get(principal.key_id)
            return [] if key is None else [key]
        return []

    async def get_key(self, key_id: str, principal: Principal) -> KeyRecord:
        """A key the principal may see (404 for any other, so as not to tell it exists)."""
        key = await self.keys.get(key_id)
        if key is None or not may_see(principal, key):
            raise NotFoundError(f"No API key '{key_id}'.", param="key_id", code="key_not_found")
        return key

    async def revoke_key(self, key_id: str, actor: Actor) -> KeyRecord:
        """Revoke a key the actor may see; a key revoked already is returned as it is."""
        key = await self.get_key(key_id, actor.principal)
        if key.revoked_at is not None:
            return key
        async with self.database.engine.begin() as conn:
            await self.keys.revoke(key.id, self._now(), conn=conn)
            revoked = await self.keys.get(key.id, conn=conn)
            if revoked is None:  # pragma: no cover - deleted meanwhile
                raise NotFoundError(f"No API key '{key_id}'.", param="key_id", code="key_not_found")
            await self._audit(
                actor, "key.revoke", "api_key", key.id, key_view(key), key_view(revoked), conn
            )
        self._evict(key_ids=[key.id])
        return revoked

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
                await self._audit(actor, "user.create", "user", user.id, None, after, conn)
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
        self._user_cache.pop(user.id, None)
        await self.audit.append(
            f"user:{user.username}", "user.login", "user", user.id, request_id=request_id, ip=ip
        )
        return replace(user, last_login_at=now)

    async def get_user(self, user_id: str) -> UserRecord | None:
        """The user, or None: cached for ``key_cache_s`` like keys (the auth middleware asks
        for a key's owner or a token's user on every request); changes made through this
        service evict it at once."""
        tick = self._clock()
        cached = self._user_cache.get(user_id)
        if cached is not None and cached[1] > tick:
            return cached[0]
        user = await self.users.get(user_id)
        if self.key_cache_s > 0:
            self._user_cache[user_id] = (user, tick + self.key_cache_s)
            self._user_cache.move_to_end(user_id)
            while len(self._user_cache) > KEY_CACHE_MAX:
                self._user_cache.popitem(last=False)
        return user

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
            await self._audit(actor, "user.update", "user", user.id, user_view(user), after, conn)
        self._evict(owner_id=user.id)
        return updated

    async def delete_user_data(self, user_id: str, actor: Actor) -> DeletionSummary:
        """Privacy deletion (admins only): the user's keys, personal fields and row (see the
        module's docstring), audited as ``user.delete`` without personal fields."""
        require_role(actor.principal, "admin")
        user = await self.require_user(user_id)
        await self._keep_an_admin(user)
        async with self.database.engine.begin() as conn:
            keys = await self.keys.list(owner_id=user.id, conn=conn)
            key_ids = [k.id for k in keys]
            deleted = await self.keys.delete_by_owner(user.id, conn=conn)
            scrubbed = await self.users.scrub_requests(user.id, key_ids, conn=conn)
            await self.users.delete(user.id, conn=conn)
            summary = DeletionSummary(user.id, deleted, scrubbed)
            before = {"id": user.id, "role": user.role, "active": user.active, "keys": key_ids}
            await self._audit(
                actor, "user.delete", "user", user.id, before, summary.to_dict(), conn
            )
        self._evict(key_ids=key_ids, owner_id=user.id)
        return summary

    async def export_user_data(self, user_id: str, actor: Actor | None = None) -> dict[str, Any]:
        """Everything stored about a user, JSON-ready: their fields, keys (without hashes),
        what their requests amounted to and the audit entries about them. Audited
        (``user.export``) when an actor is given."""
        if actor is not None:
            require_role(actor.principal, "admin")
        user = await self.require_user(user_id)
        keys = await self.keys.list(owner_id=user.id)
        usage = await self.users.usage_summary(user.id, [k.id for k in keys])
        audit = await self.audit.list(target_type="user", target_id=user.id, limit=1000)
        if actor is not None:
            await self._audit(actor, "user.export", "user", user.id, None, None, None)
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
        return await self.users.count() > 0 or await self.keys.any_unrevoked()

    # --- helpers -----------------------------------------------------------------------------

    async def _owner(self, owner_id: str) -> UserRecord:
        user = await self.users.get(owner_id) or await self.users.get_by_username(owner_id)
        if user is None:
            raise InvalidRequestError(
                f"No user '{owner_id}' to own the key.", param="owner", code="user_not_found"
            )
        return user

    async def _keep_an_admin(self, user: UserRecord) -> None:
        if user.role != "admin" or not user.active:
            return
        if await self.users.count(role="admin", active_only=True) <= 1:
            raise InvalidRequestError(
                f"'{user.username}' is the last active admin; make another admin first.",
                param="user_id",
                code="last_admin",
            )

    async def _audit(
        self,
        actor: Actor,
        action: str,
        target_type: str,
        target_id: str | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        conn: Any,
    ) -> None:
        await self.audit.append(
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
