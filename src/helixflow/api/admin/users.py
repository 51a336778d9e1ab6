"""Users and the audit log: ``/api/v1/users`` and ``GET /api/v1/audit``.

Admins only, except ``GET /api/v1/users/me`` (anyone authenticated: who am I?).
``DELETE /api/v1/users/{user_id}`` is the privacy deletion and ``GET .../export`` the privacy
export (see ``security/privacy.py`` for what each covers). Every change is audited.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from helixflow.api.admin import params
from helixflow.api.admin.analytics import Range
from helixflow.api.admin.keys import Accounts, actor_of
from helixflow.api.admin.params import LimitParam
from helixflow.api.auth import require
from helixflow.security.account_policy import EMAIL_PATTERN, USERNAME_PATTERN
from helixflow.security.accounts import UserChanges
from helixflow.security.identity import Principal, PrincipalKind, Role, UserRecord
from helixflow.security.passwords import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS
from helixflow.security_config import LimitSet

router = APIRouter(prefix="/api/v1", tags=["users"])

Admin = Annotated[Principal, Depends(require("admin"))]
Viewer = Annotated[Principal, Depends(require("viewer"))]

MAX_OFFSET = 1_000_000


# --- requests --------------------------------------------------------------------------------


class LimitsIn(LimitSet):
    model_config = ConfigDict(extra="forbid")


Password = Annotated[str, Field(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)]
Email = Annotated[str, Field(max_length=256, pattern=EMAIL_PATTERN)]
DisplayName = Annotated[str, Field(max_length=128)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64, pattern=USERNAME_PATTERN)
    password: Password | None = Field(
        default=None, description="None: the user may not log in, only own keys."
    )
    role: Role = "viewer"
    email: Email | None = None
    display_name: DisplayName | None = None
    active: bool = True
    limits: LimitsIn | None = None


class UserPatch(BaseModel):
    """Fields left out are unchanged; ``email``, ``display_name`` and ``password`` set to
    null are cleared (no password: the user may no longer log in)."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    active: bool | None = None
    limits: LimitsIn | None = None
    email: Email | None = None
    display_name: DisplayName | None = None
    password: Password | None = None

    def changes(self) -> UserChanges:
        given = self.model_fields_set
        changes: UserChanges = {}
        if self.role is not None:
            changes["role"] = self.role
        if self.active is not None:
            changes["active"] = self.active
        if self.limits is not None:
            changes["limits"] = LimitSet.model_validate(self.limits.model_dump())
        if "email" in given:
            changes["email"] = self.email
        if "display_name" in given:
            changes["display_name"] = self.display_name
        if "password" in given:
            changes["password"] = self.password
        return changes


# --- responses -------------------------------------------------------------------------------


class UserItem(BaseModel):
    object: Literal["user"] = "user"
    id: str
    username: str
    role: Role
    active: bool
    email: str | None
    display_name: str | None
    limits: LimitSet
    created_at: datetime | None
    last_login_at: datetime | None


class UserList(BaseModel):
    object: Literal["list"] = "list"
    data: list[UserItem]


class Me(BaseModel):
    object: Literal["principal"] = "principal"
    kind: PrincipalKind
    role: Role
    name: str
    user_id: str | None
    key_id: str | None
    models: list[str] | None = Field(description="Models the caller may use; None: every one.")
    user: UserItem | None = Field(description="The user acting, or owning the key acting.")


class Deleted(BaseModel):
    object: Literal["user.deleted"] = "user.deleted"
    id: str
    deleted: bool = True
    keys_deleted: int
    requests_scrubbed: int = Field(description="Requests whose personal fields were cleared.")


class AuditItem(BaseModel):
    id: int
    created_at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    ip_address: str | None


class AuditList(BaseModel):
    object: Literal["list"] = "list"
    since: datetime = Field(description="Start of the range (inclusive, UTC).")
    until: datetime = Field(description="End of the range (exclusive, UTC).")
    data: list[AuditItem]


def user_item(user: UserRecord) -> UserItem:
    return UserItem(
        id=user.id,
        username=user.username,
        role=user.role,
        active=user.active,
        email=user.email,
        display_name=user.display_name,
        limits=user.limits,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
    )


OffsetParam = Annotated[
    str | None,
    Query(
        description="How many users to skip (paging).",
        json_schema_extra=params.schema(type="integer", minimum=0, default=0),
    ),
]
ActorParam = Annotated[str | None, Query(description="Only this actor (`user:alice`, `cli`).")]
ActionParam = Annotated[str | None, Query(description="Only this action (`key.create`...).")]
TargetTypeParam = Annotated[str | None, Query(description="Only this kind of target (`user`).")]
TargetIdParam = Annotated[str | None, Query(description="Only this target's id.")]


# --- endpoints -------------------------------------------------------------------------------


@router.get("/users/me", response_model=Me)
async def me(accounts: Accounts, principal: Viewer) -> Me:
    """Who the caller is: their principal and, when a user acts (or owns the key), the user."""
    user = None if principal.user_id is None else await accounts.get_user(principal.user_id)
    models = principal.allowed_models
    return Me(
        kind=principal.kind,
        role=principal.role,
        name=principal.name,
        user_id=principal.user_id,
        key_id=principal.key_id,
        models=None if models is None else sorted(models),
        user=None if user is None else user_item(user),
    )


@router.post("/users", status_code=201, response_model=UserItem)
async def create_user(
    body: UserCreate, request: Request, accounts: Accounts, principal: Admin
) -> UserItem:
    user = await accounts.create_user(
        body.username,
        body.password,
        body.role,
        actor_of(request, principal),
        email=body.email,
        display_name=body.display_name,
        limits=None if body.limits is None else LimitSet.model_validate(body.limits.model_dump()),
        active=body.active,
    )
    return user_item(user)


@router.get("/users", response_model=UserList)
async def list_users(
    accounts: Accounts,
    _principal: Admin,
    limit: LimitParam = None,
    offset: OffsetParam = None,
) -> UserList:
    """Users by name."""
    skip = params.integer(offset, "offset", MAX_OFFSET, minimum=0) or 0
    users = await accounts.list_users(limit=params.limit(limit), offset=skip)
    return UserList(data=[user_item(u) for u in users])


@router.get("/users/{user_id}", response_model=UserItem)
async def get_user(user_id: str, accounts: Accounts, _principal: Admin) -> UserItem:
    return user_item(await accounts.require_user(user_id))


@router.patch("/users/{user_id}", response_model=UserItem)
async def update_user(
    user_id: str, body: UserPatch, request: Request, accounts: Accounts, principal: Admin
) -> UserItem:
    """Change role, state, limits, e-mail, display name or password."""
    user = await accounts.update_user(user_id, body.changes(), actor_of(request, principal))
    return user_item(user)


@router.delete("/users/{user_id}", response_model=Deleted)
async def delete_user(
    user_id: str, request: Request, accounts: Accounts, principal: Admin
) -> Deleted:
    """Privacy deletion: the user, their keys and the personal fields of their requests."""
    summary = await accounts.delete_user_data(user_id, actor_of(request, principal))
    return Deleted(
        id=summary.user_id,
        keys_deleted=summary.keys_deleted,
        requests_scrubbed=summary.requests_scrubbed,
    )


@router.get("/users/{user_id}/export")
async def export_user(
    user_id: str, request: Request, accounts: Accounts, principal: Admin
) -> dict[str, Any]:
    """Privacy export: everything stored about the user, as one JSON document."""
    return await accounts.export_user_data(user_id, actor_of(request, principal))


@router.get("/audit", response_model=AuditList)
async def list_audit(
    accounts: Accounts,
    _principal: Admin,
    time_range: Range,
    actor: ActorParam = None,
    action: ActionParam = None,
    target_type: TargetTypeParam = None,
    target_id: TargetIdParam = None,
    limit: LimitParam = None,
) -> AuditList:
    """Administrative actions in the range, newest first."""
    entries = await accounts.audit.list(
        since=time_range.since,
        until=time_range.until,
        actor=params.name(actor, "actor", 128),
        action=params.name(action, "action", 64),
        target_type=params.name(target_type, "target_type", 64),
        target_id=params.name(target_id, "target_id"),
        limit=params.limit(limit),
    )
    return AuditList(
        since=time_range.since,
        until=time_range.until,
        data=[AuditItem.model_validate(e.to_dict()) for e in entries],
    )
