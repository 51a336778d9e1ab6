"""API keys: ``POST/GET /api/v1/keys``, ``GET/DELETE /api/v1/keys/{key_id}``.

A developer manages their own keys (created for themselves, no role, models or limits beyond
their own); an admin sees and revokes every key and may create one for any user (``owner``).
The key itself is in the creation's reply only (``key``); it is stored nowhere.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from helixflow.api.auth import require
from helixflow.errors import ServiceUnavailableError
from helixflow.security.account_policy import MAX_KEY_NAME_CHARS, key_status
from helixflow.security.accounts import AccountService, Actor
from helixflow.security.identity import KeyRecord, Principal, Role
from helixflow.security_config import BudgetPeriod, LimitSet

router = APIRouter(prefix="/api/v1", tags=["keys"])

MAX_MODELS = 256
MAX_EXPIRY_DAYS = 3650
MAX_RATE = 1_000_000_000


def get_accounts(request: Request) -> AccountService:
    """The AccountService the lifespan put on ``app.state.accounts`` (503 without one)."""
    accounts = getattr(request.app.state, "accounts", None)
    if not isinstance(accounts, AccountService):
        raise ServiceUnavailableError(
            "Accounts need a database, and none is configured.", code="accounts_unavailable"
        )
    return accounts


def actor_of(request: Request, principal: Principal) -> Actor:
    """The principal as the audit log records it, with the request's id and address."""
    state = request.scope.get("state", {})
    request_id = state.get("request_id")
    return Actor(
        principal,
        request_id=request_id if isinstance(request_id, str) else None,
        ip=request.client.host if request.client is not None else None,
    )


Accounts = Annotated[AccountService, Depends(get_accounts)]
Developer = Annotated[Principal, Depends(require("developer"))]


# --- requests --------------------------------------------------------------------------------


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_KEY_NAME_CHARS, description="What it is for.")
    models: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MODELS,
        description="Models (ids, aliases or groups) the key may call; default every model.",
    )
    rpm: int | None = Field(default=None, ge=1, le=MAX_RATE, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, le=MAX_RATE, description="Tokens per minute.")
    max_parallel: int | None = Field(
        default=None, ge=1, le=MAX_RATE, description="Requests in flight at once."
    )
    budget_usd: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Spend allowed per period."
    )
    budget_period: BudgetPeriod = "month"
    expires_at: datetime | None = Field(
        default=None, description="When the key stops working (UTC when no offset)."
    )
    expires_in_days: int | None = Field(
        default=None, ge=1, le=MAX_EXPIRY_DAYS, description="Or: days from now."
    )
    role: Role | None = Field(
        default=None, description="Default developer (or the owner's role, when lower)."
    )
    owner: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The owning user's id or name (admins only); default the caller.",
    )

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyCreate:
        if self.expires_at is not None and self.expires_in_days is not None:
            raise PydanticCustomError(
                "conflicting_expiry",
                "give expires_at or expires_in_days, not both",
                {"param": "expires_in_days"},
            )
        return self

    def limits(self) -> LimitSet:
        return LimitSet(
            rpm=self.rpm,
            tpm=self.tpm,
            max_parallel=self.max_parallel,
            budget_usd=self.budget_usd,
            budget_period=self.budget_period,
        )

    def expiry(self, now: datetime) -> datetime | None:
        if self.expires_in_days is not None:
            return now + timedelta(days=self.expires_in_days)
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            return self.expires_at.replace(tzinfo=UTC)
        return self.expires_at


# --- responses -------------------------------------------------------------------------------


class KeyItem(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    role: Role
    owner_id: str | None
    models: list[str] | None = Field(description="None: every model.")
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    budget_usd: float | None
    budget_period: BudgetPeriod
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime | None
    last_used_at: datetime | None
    created_by: str | None
    status: Literal["active", "revoked", "expired"]


class KeyCreated(KeyItem):
    key: str = Field(description="The key itself: shown this once, stored nowhere.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyItem]


def key_item(key: KeyRecord, now: datetime | None = None) -> KeyItem:
    limits = key.limits
    return KeyItem(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        role=key.role,
        owner_id=key.owner_id,
        models=None if key.allowed_models is None else sorted(key.allowed_models),
        rpm=limits.rpm,
        tpm=limits.tpm,
        max_parallel=limits.max_parallel,
        budget_usd=limits.budget_usd,
        budget_period=limits.budget_period,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        created_by=key.created_by,
        status=cast(
            Literal["active", "revoked", "expired"], key_status(key, now or datetime.now(UTC))
        ),
    )


# --- endpoints -------------------------------------------------------------------------------


@router.post("/keys", status_code=201, response_model=KeyCreated)
async def create_key(
    body: KeyCreate, request: Request, accounts: Accounts, principal: Developer
) -> KeyCreated:
    """A new API key; the reply's ``key`` is the only time it is shown."""
    now = datetime.now(UTC)
    record, plaintext = await accounts.create_key(
        body.name,
        owner_id=body.owner,
        role=body.role,
        allowed_models=body.models,
        limits=body.limits(),
        expires_at=body.expiry(now),
        actor=actor_of(request, principal),
    )
    return KeyCreated(**key_item(record, now).model_dump(), key=plaintext)


@router.get("/keys", response_model=KeyList)
async def list_keys(accounts: Accounts, principal: Developer) -> KeyList:
    """Every key for an admin; for anyone else, their own. Newest first."""
    now = datetime.now(UTC)
    return KeyList(data=[key_item(k, now) for k in await accounts.list_keys(principal)])


@router.get("/keys/{key_id}", response_model=KeyItem)
async def get_key(key_id: str, accounts: Accounts, principal: Developer) -> KeyItem:
    return key_item(await accounts.get_key(key_id, principal))


@router.delete("/keys/{key_id}", response_model=KeyItem)
async def revoke_key(
    key_id: str, request: Request, accounts: Accounts, principal: Developer
) -> KeyItem:
    """Revoke the key: it stops working at once on this replica, within seconds on others."""
    return key_item(await accounts.revoke_key(key_id, actor_of(request, principal)))
