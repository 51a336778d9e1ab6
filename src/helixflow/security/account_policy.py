"""The rules of :class:`helixflow.security.accounts.AccountService`: what a user, a key and a
name may be, who may create which key, and the public views of users and keys (what the admin
API and the CLI show and the audit log records: never a key, a hash or a password).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from helixflow.errors import InvalidRequestError, PermissionDeniedError
from helixflow.security.identity import (
    ROLES,
    KeyRecord,
    Principal,
    Role,
    UserRecord,
    role_at_least,
)
from helixflow.security_config import LimitSet

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
EMAIL_PATTERN = r"^[^@\s]{1,128}@[^@\s]{1,127}$"
MAX_KEY_NAME_CHARS = 128
MAX_NAME_CHARS = 128
_USERNAME = re.compile(USERNAME_PATTERN)
_EMAIL = re.compile(EMAIL_PATTERN)
_LIMIT_FIELDS = ("rpm", "tpm", "max_parallel", "budget_usd")


# --- public views (what the API shows and the audit log records) -----------------------------


def limits_view(limits: LimitSet) -> dict[str, Any]:
    return limits.model_dump()


def user_view(user: UserRecord, *, personal: bool = False) -> dict[str, Any]:
    """A user, JSON-ready; e-mail and display name only with ``personal``."""
    view: dict[str, Any] = {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "active": user.active,
        "limits": limits_view(user.limits),
        "created_at": iso(user.created_at),
        "last_login_at": iso(user.last_login_at),
    }
    if personal:
        view["email"] = user.email
        view["display_name"] = user.display_name
    return view


def key_view(key: KeyRecord) -> dict[str, Any]:
    """A key, JSON-ready, without the key or its hash."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "role": key.role,
        "owner_id": key.owner_id,
        "models": None if key.allowed_models is None else sorted(key.allowed_models),
        "limits": limits_view(key.limits),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "created_at": iso(key.created_at),
        "last_used_at": iso(key.last_used_at),
        "created_by": key.created_by,
    }


def key_status(key: KeyRecord, now: datetime) -> str:
    """``active``, ``revoked`` or ``expired``."""
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


# --- checks ----------------------------------------------------------------------------------


def require_role(principal: Principal, role: Role) -> None:
    if not principal.has_role(role):
        raise PermissionDeniedError(
            f"This needs the {role} role; {principal.name} has {principal.role}.",
            code="insufficient_role",
        )


def lower_role(a: Role, b: Role) -> Role:
    return a if ROLES.index(a) <= ROLES.index(b) else b


def key_role_for_owner(role: Role | None, owner: UserRecord | None) -> Role:
    if role is not None:
        check_role(role)
    if owner is None:
        return role or "developer"
    if role is None:
        return lower_role("developer", owner.role)
    if not role_at_least(owner.role, role):
        raise InvalidRequestError(
            f"A key of {owner.username} ({owner.role}) cannot have the {role} role.",
            param="role",
            code="role_above_owner",
        )
    return role


def within_own_rights(
    principal: Principal,
    owner_id: str | None,
    role: Role | None,
    models: frozenset[str] | None,
    limits: LimitSet,
) -> tuple[str, Role, frozenset[str] | None, LimitSet]:
    """A non-admin's key: theirs, no role above theirs, within their key's models and limits."""
    if principal.user_id is None:
        raise PermissionDeniedError(
            "Only a user or an admin may create API keys.", code="insufficient_role"
        )
    if owner_id is not None and owner_id != principal.user_id:
        raise PermissionDeniedError(
            "You may only create keys for yourself.", param="owner", code="not_owner"
        )
    if role is not None:
        check_role(role)
    key_role = role or lower_role("developer", principal.role)
    if not role_at_least(principal.role, key_role):
        raise PermissionDeniedError(
            f"You may not create a key with the {key_role} role (you have {principal.role}).",
            param="role",
            code="role_too_high",
        )
    allowed = principal.allowed_models
    if allowed is not None:
        if models is None:
            models = allowed
        elif not models <= allowed:
            raise PermissionDeniedError(
                "The key may only allow models your own key allows: "
                + ", ".join(sorted(models - allowed))
                + " is not among them.",
                param="models",
                code="model_not_allowed",
            )
    return principal.user_id, key_role, models, capped_limits(limits, principal.key_limits)


def capped_limits(limits: LimitSet, cap: LimitSet | None) -> LimitSet:
    """``limits`` with every limit the caller's key has at most as high (unset: inherited)."""
    if cap is None:
        return limits
    values = limits.model_dump()
    for name in _LIMIT_FIELDS:
        ceiling = getattr(cap, name)
        if ceiling is None:
            continue
        wanted = values[name]
        if wanted is None:
            values[name] = ceiling
        elif wanted > ceiling:
            raise PermissionDeniedError(
                f"{name} {wanted} is above your own key's {ceiling}.",
                param=name,
                code="limit_too_high",
            )
    if cap.budget_usd is not None:
        if limits.budget_usd is not None and limits.budget_period != cap.budget_period:
            raise PermissionDeniedError(
                f"The budget must be per {cap.budget_period}, as your own key's.",
                param="budget_period",
                code="limit_too_high",
            )
        values["budget_period"] = cap.budget_period
    return LimitSet.model_validate(values)


def may_see(principal: Principal, key: KeyRecord) -> bool:
    if principal.has_role("admin"):
        return True
    if principal.user_id is not None and key.owner_id == principal.user_id:
        return True
    return principal.key_id is not None and key.id == principal.key_id


def key_name(name: str) -> str:
    text = name.strip()
    if not text or len(text) > MAX_KEY_NAME_CHARS:
        raise InvalidRequestError(
            f"A key's name must be 1 to {MAX_KEY_NAME_CHARS} characters.",
            param="name",
            code="invalid_name",
        )
    return text


def check_username(username: str) -> None:
    if not _USERNAME.fullmatch(username):
        raise InvalidRequestError(
            "A user name is 1 to 64 letters, digits and . _ @ - (starting with a letter or digit).",
            param="username",
            code="invalid_username",
        )


def check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidRequestError(
            f"Unknown role '{role}': use one of {', '.join(ROLES)}.",
            param="role",
            code="invalid_role",
        )


def check_email(email: str | None) -> None:
    if email is not None and not _EMAIL.fullmatch(email):
        raise InvalidRequestError(
            "That is not an e-mail address.", param="email", code="invalid_email"
        )


def check_display_name(display_name: str | None) -> None:
    if display_name is not None and len(display_name) > MAX_NAME_CHARS:
        raise InvalidRequestError(
            f"A display name is at most {MAX_NAME_CHARS} characters.",
            param="display_name",
            code="invalid_display_name",
        )


def as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
