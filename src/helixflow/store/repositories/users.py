"""``users``: the people who log in and own API keys, and what they used (for a privacy export).

Records are :class:`helixflow.security.identity.UserRecord`; the password hash never leaves
this module except through :meth:`UserRepository.credentials`, for the login check.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict, cast

from sqlalchemy import Row, case, delete, func, null, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from helixflow.security.identity import Role, UserRecord
from helixflow.security_config import LimitSet
from helixflow.store.database import Database
from helixflow.store.repositories.audit import begin
from helixflow.store.schema import InferenceRequest, User, table_of, utcnow

_USERS = table_of(User)
_REQUESTS = table_of(InferenceRequest)
_CHUNK = 500


class UsernameTakenError(ValueError):
    """Another user already has this name."""


class UserUpdate(TypedDict, total=False):
    """The columns :meth:`UserRepository.update` may change (absent: unchanged)."""

    username: str
    role: Role
    active: bool
    limits: LimitSet
    email: str | None
    display_name: str | None
    password_hash: str | None


@dataclass(frozen=True, slots=True)
class ModelUsage:
    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """What a user's requests amounted to (their own and their keys')."""

    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    first_request_at: datetime | None
    last_request_at: datetime | None
    by_model: tuple[ModelUsage, ...]


class UserRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(
        self,
        user: UserRecord,
        password_hash: str | None,
        *,
        conn: AsyncConnection | None = None,
    ) -> UserRecord:
        """Insert ``user``; raises :class:`UsernameTakenError` when the name is in use."""
        now = utcnow()
        values: dict[str, Any] = {
            "id": user.id,
            "username": user.username,
            "email": user.email,
            "display_name": user.display_name,
            "role": user.role,
            "password_hash": password_hash,
            "active": user.active,
            "limits": _limits_json(user.limits),
            "last_login_at": user.last_login_at,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with begin(self.database, conn) as c:
                await c.execute(_USERS.insert().values(**values))
        except IntegrityError as exc:
            raise UsernameTakenError(user.username) from exc
        created = await self.get(user.id, conn=conn)
        if created is None:  # pragma: no cover - just inserted
            raise RuntimeError(f"user {user.id} vanished after insert")
        return created

    async def get(self, user_id: str, *, conn: AsyncConnection | None = None) -> UserRecord | None:
        row = await self._one(select(_USERS).where(_USERS.c.id == user_id), conn)
        return None if row is None else user_from_row(row)

    async def get_by_username(self, username: str) -> UserRecord | None:
        row = await self._one(select(_USERS).where(_USERS.c.username == username), None)
        return None if row is None else user_from_row(row)

    async def credentials(self, username: str) -> tuple[UserRecord, str | None] | None:
        """The user and their password hash (None: no password), for the login check."""
        row = await self._one(select(_USERS).where(_USERS.c.username == username), None)
        return None if row is None else (user_from_row(row), row.password_hash)

    async def list(self, *, limit: int = 1000, offset: int = 0) -> builtins.list[UserRecord]:
        """Users by name."""
        stmt = select(_USERS).order_by(_USERS.c.username).limit(limit).offset(offset)
        async with self.database.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [user_from_row(r) for r in rows]

    async def count(self, *, role: Role | None = None, active_only: bool = False) -> int:
        stmt = select(func.count()).select_from(_USERS)
        if role is not None:
            stmt = stmt.where(_USERS.c.role == role)
        if active_only:
            stmt = stmt.where(_USERS.c.active.is_(true()))
        async with self.database.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def update(
        self, user_id: str, changes: UserUpdate, *, conn: AsyncConnection | None = None
    ) -> UserRecord | None:
        """Apply ``changes``; the updated user, or None when there is no such user.
        Raises :class:`UsernameTakenError` when a new name is in use."""
        values: dict[str, Any] = dict(changes)
        if "limits" in changes:
            values["limits"] = _limits_json(changes["limits"])
        values["updated_at"] = utcnow()
        try:
            async with begin(self.database, conn) as c:
                result = await c.execute(
                    update(_USERS).where(_USERS.c.id == user_id).values(**values)
                )
        except IntegrityError as exc:
            raise UsernameTakenError(str(changes.get("username"))) from exc
        if not result.rowcount:
            return None
        return await self.get(user_id, conn=conn)

    async def touch_login(self, user_id: str, at: datetime) -> None:
        async with self.database.engine.begin() as conn:
            await conn.execute(
                update(_USERS).where(_USERS.c.id == user_id).values(last_login_at=_utc(at))
            )

    async def delete(self, user_id: str, *, conn: AsyncConnection | None = None) -> bool:
        """Remove the user's row (their keys and refresh tokens go with it, by cascade)."""
        async with begin(self.database, conn) as c:
            result = await c.execute(delete(_USERS).where(_USERS.c.id == user_id))
        return bool(result.rowcount)

    async def usage_summary(self, user_id: str, key_ids: Sequence[str]) -> UsageSummary:
        """Requests made as the user or with one of ``key_ids``: counts, tokens and cost."""
        where = _requests_of(user_id, key_ids)
        totals = (
            select(
                func.count().label("requests"),
                func.coalesce(func.sum(case((_REQUESTS.c.status == "error", 1), else_=0)), 0).label(
                    "errors"
                ),
                func.coalesce(func.sum(_REQUESTS.c.prompt_tokens), 0).label("prompt_tokens"),
                func.coalesce(func.sum(_REQUESTS.c.completion_tokens), 0).label(
                    "completion_tokens"
                ),
                func.coalesce(func.sum(_REQUESTS.c.cost_usd), 0).label("cost_usd"),
                func.min(_REQUESTS.c.created_at).label("first_at"),
                func.max(_REQUESTS.c.created_at).label("last_at"),
            )
            .select_from(_REQUESTS)
            .where(where)
        )
        per_model = (
            select(
                _REQUESTS.c.served_model,
                func.count().label("requests"),
                func.coalesce(func.sum(_REQUESTS.c.prompt_tokens), 0).label("prompt_tokens"),
                func.coalesce(func.sum(_REQUESTS.c.completion_tokens), 0).label(
                    "completion_tokens"
                ),
                func.coalesce(func.sum(_REQUESTS.c.cost_usd), 0).label("cost_usd"),
            )
            .where(where)
            .group_by(_REQUESTS.c.served_model)
            .order_by(func.count().desc(), _REQUESTS.c.served_model)
        )
        async with self.database.engine.connect() as conn:
            total = (await conn.execute(totals)).one()
            models = (await conn.execute(per_model)).all()
        return UsageSummary(
            requests=int(total.requests),
            errors=int(total.errors),
            prompt_tokens=int(total.prompt_tokens),
            completion_tokens=int(total.completion_tokens),
            cost_usd=float(total.cost_usd),
            first_request_at=None if total.first_at is None else _utc(total.first_at),
            last_request_at=None if total.last_at is None else _utc(total.last_at),
            by_model=tuple(
                ModelUsage(
                    model=m.served_model,
                    requests=int(m.requests),
                    prompt_tokens=int(m.prompt_tokens),
                    completion_tokens=int(m.completion_tokens),
                    cost_usd=float(m.cost_usd),
                )
                for m in models
            ),
        )

    async def scrub_requests(
        self, user_id: str, key_ids: Sequence[str], *, conn: AsyncConnection | None = None
    ) -> int:
        """Clear the personal fields the requests of a user (or their keys) carry: the
        client's ``user`` field and its request id. Returns how many rows changed."""
        async with begin(self.database, conn) as c:
            result = await c.execute(
                update(_REQUESTS)
                .where(
                    _requests_of(user_id, key_ids),
                    or_(
                        _REQUESTS.c.end_user.is_not(None),
                        _REQUESTS.c.client_request_id.is_not(None),
                    ),
                )
                .values(end_user=None, client_request_id=None)
            )
        return int(result.rowcount or 0)

    async def _one(self, stmt: Any, conn: AsyncConnection | None) -> Row[Any] | None:
        if conn is not None:
            return (await conn.execute(stmt)).first()
        async with self.database.engine.connect() as own:
            return (await own.execute(stmt)).first()


def user_from_row(row: Row[Any]) -> UserRecord:
    return UserRecord(
        id=row.id,
        username=row.username,
        role=cast(Role, row.role),
        active=bool(row.active),
        email=row.email,
        display_name=row.display_name,
        limits=LimitSet.model_validate(row.limits or {}),
        created_at=None if row.created_at is None else _utc(row.created_at),
        last_login_at=None if row.last_login_at is None else _utc(row.last_login_at),
    )


def _requests_of(user_id: str, key_ids: Sequence[str]) -> Any:
    clauses = [_REQUESTS.c.user_id == user_id]
    for start in range(0, len(key_ids), _CHUNK):
        clauses.append(_REQUESTS.c.api_key_id.in_(list(key_ids[start : start + _CHUNK])))
    return or_(*clauses)


def _limits_json(limits: LimitSet) -> Any:
    """The limits set (SQL NULL when none is)."""
    data = limits.model_dump(exclude_defaults=True)
    return data or null()


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
