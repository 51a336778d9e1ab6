"""Who is calling: users, API keys and the principal a request acts as.

Roles are ordered: ``viewer`` reads (analytics, router state, models), ``developer`` also calls
the models and manages their own keys, ``admin`` does everything (users, every key, the
audit log, router operations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from helixflow.security_config import LimitSet

Role = Literal["admin", "developer", "viewer"]
ROLES: tuple[Role, ...] = ("viewer", "developer", "admin")
_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}


def role_at_least(role: str, needed: Role) -> bool:
    return _RANK.get(role, -1) >= _RANK[needed]


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    username: str
    role: Role
    active: bool = True
    email: str | None = None
    display_name: str | None = None
    limits: LimitSet = field(default_factory=LimitSet)
    created_at: datetime | None = None
    last_login_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as stored (never the key itself)."""

    id: str
    name: str
    prefix: str
    """The key's first characters, to recognize it in a list."""
    role: Role
    owner_id: str | None = None
    allowed_models: frozenset[str] | None = None
    """None: every model."""
    limits: LimitSet = field(default_factory=LimitSet)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    created_by: str | None = None


PrincipalKind = Literal["key", "user", "anonymous"]


@dataclass(frozen=True, slots=True)
class Principal:
    """What a request acts as, resolved once per request by the auth middleware."""

    kind: PrincipalKind
    role: Role
    name: str
    """The key's name, the user's name, or ``anonymous``."""
    user_id: str | None = None
    key_id: str | None = None
    allowed_models: frozenset[str] | None = None
    key_limits: LimitSet | None = None
    user_limits: LimitSet | None = None
    token_id: str | None = None
    """The access token's ``jti`` (dashboard sessions), for logout."""
    token_expires_at: datetime | None = None
    via_cookie: bool = False
    """Authenticated by the session cookie: unsafe methods need the CSRF token too."""

    def has_role(self, needed: Role) -> bool:
        return role_at_least(self.role, needed)

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    @property
    def actor(self) -> str:
        """How the audit log names this principal."""
        if self.kind == "key":
            return f"key:{self.key_id}"
        if self.kind == "user":
            return f"user:{self.username_or_id}"
        return "anonymous"

    @property
    def username_or_id(self) -> str:
        return self.name or (self.user_id or "")


ANONYMOUS = Principal(kind="anonymous", role="admin", name="anonymous")
"""The principal of every request while authentication is off (loopback, no keys yet)."""
