"""The relational schema: one class per table, portable across SQLite, PostgreSQL and SAP HANA.

Migrations (``store/migrations``) create exactly these tables; a test compares the two.
Timestamps are stored in UTC. Ids of other subsystems (API keys, users, experiments) are kept
as plain strings where their tables belong to later migrations, so that telemetry never waits on
a foreign row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

BigId = BigInteger().with_variant(Integer(), "sqlite")
"""64-bit surrogate keys; SQLite only auto-increments an INTEGER PRIMARY KEY."""

Money = Numeric(18, 10, asdecimal=False)
"""US dollars: exact storage, floats in Python."""

Timestamp = DateTime(timezone=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(
        Timestamp, default=utcnow, server_default=func.current_timestamp()
    )
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, default=utcnow, onupdate=utcnow, server_default=func.current_timestamp()
    )


# --- catalogue -------------------------------------------------------------------------------


class Provider(TimestampMixin, Base):
    """An upstream OpenAI-compatible API. Its key is never stored: only where to read it."""

    __tablename__ = "providers"

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    base_url: Mapped[str] = mapped_column(String(1024))
    api_key_env: Mapped[str | None] = mapped_column(String(128))
    region: Mapped[str | None] = mapped_column(String(64))
    weight: Mapped[float] = mapped_column(Double, default=1.0)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Model(TimestampMixin, Base):
    """A servable model: local (no provider) or behind a provider."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    provider_id: Mapped[int | None] = mapped_column(
        ForeignKey("providers.id", ondelete="CASCADE"), index=True
    )
    upstream_name: Mapped[str | None] = mapped_column(String(256))
    backend: Mapped[str] = mapped_column(String(32))
    context_window: Mapped[int | None] = mapped_column(Integer)
    input_price_per_mtok: Mapped[float] = mapped_column(Money, default=0.0)
    output_price_per_mtok: Mapped[float] = mapped_column(Money, default=0.0)
    capabilities: Mapped[list[Any] | None] = mapped_column(JSON)
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class ModelVersion(TimestampMixin, Base):
    """A registered build of a model, with its lifecycle stage."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        Index(None, "model_id", "stage"),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(32), default="none")
    artifact_uri: Mapped[str | None] = mapped_column(String(1024))
    checksum_sha256: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    notes: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(128))


# --- telemetry -------------------------------------------------------------------------------


class InferenceRequest(Base):
    """One row per API request, written by the telemetry writer (idempotent on request_id)."""

    __tablename__ = "inference_requests"
    __table_args__ = (
        Index(None, "served_model", "created_at"),
        Index(None, "provider", "created_at"),
        Index(None, "api_key_id", "created_at"),
        Index(None, "user_id", "created_at"),
        Index(None, "agent_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    client_request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    api_key_id: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(64))
    end_user: Mapped[str | None] = mapped_column(String(256))
    agent_id: Mapped[str | None] = mapped_column(String(128))
    requested_model: Mapped[str | None] = mapped_column(String(256))
    served_model: Mapped[str | None] = mapped_column(String(256))
    provider: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int] = mapped_column(SmallInteger)
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[float | None] = mapped_column(Double)
    latency_ms: Mapped[float] = mapped_column(Double)
    cost_usd: Mapped[float] = mapped_column(Money, default=0.0)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    experiment_id: Mapped[str | None] = mapped_column(String(64))
    experiment_arm: Mapped[str | None] = mapped_column(String(64))


class RoutingDecision(Base):
    """Why a request went where it went: the candidates, their scores and the fallbacks."""

    __tablename__ = "routing_decisions"
    __table_args__ = (Index(None, "chosen_target", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    requested_model: Mapped[str | None] = mapped_column(String(256))
    strategy: Mapped[str] = mapped_column(String(64))
    candidates: Mapped[list[Any] | None] = mapped_column(JSON)
    chosen_target: Mapped[str | None] = mapped_column(String(256))
    reason: Mapped[str | None] = mapped_column(String(1024))
    fallback_attempts: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[list[Any] | None] = mapped_column(JSON)
    decision_ms: Mapped[float | None] = mapped_column(Double)


class Alert(Base):
    """A router alert (error rate, latency p95, open circuits): one row from firing to resolved."""

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint("severity IN ('warning', 'critical')", name="severity"),
        CheckConstraint("state IN ('firing', 'resolved')", name="state"),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(
        Timestamp, default=utcnow, server_default=func.current_timestamp(), index=True
    )
    rule: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(256))
    """None for a rule over every target (open circuits)."""
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="firing")
    value: Mapped[float] = mapped_column(Double)
    threshold: Mapped[float] = mapped_column(Double)
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp)


# --- agents ----------------------------------------------------------------------------------


class Agent(TimestampMixin, Base):
    """A caller that identifies itself (``X-Agent-Id``) and declares what it needs."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    capabilities: Mapped[list[Any] | None] = mapped_column(JSON)
    preferences: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AgentConnection(Base):
    """A directed edge of the agent topology (who calls or hands off to whom)."""

    __tablename__ = "agent_connections"
    __table_args__ = (
        UniqueConstraint("source_agent_id", "target_agent_id", "relation"),
        CheckConstraint("source_agent_id <> target_agent_id", name="not_self"),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    source_agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    target_agent_id: Mapped[int] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), index=True
    )
    relation: Mapped[str] = mapped_column(String(64), default="calls")
    weight: Mapped[float] = mapped_column(Double, default=1.0)
    created_at: Mapped[datetime] = mapped_column(
        Timestamp, default=utcnow, server_default=func.current_timestamp()
    )


class AgentModelAssignment(Base):
    """Which model an agent is assigned to; history is kept, one row active per agent."""

    __tablename__ = "agent_model_assignments"
    __table_args__ = (
        Index(None, "agent_id", "active"),
        Index(None, "model_id", "active"),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    score: Mapped[float] = mapped_column(Double)
    assigned_at: Mapped[datetime] = mapped_column(
        Timestamp, default=utcnow, server_default=func.current_timestamp()
    )
    active: Mapped[bool] = mapped_column(Boolean, default=True)


# --- session KV cache ------------------------------------------------------------------------


class KVSession(TimestampMixin, Base):
    """A conversation's saved KV state (the blob itself is in the KV store's tiers)."""

    __tablename__ = "kv_sessions"
    __table_args__ = (
        UniqueConstraint("session_hash", "model"),
        Index(None, "last_used_at"),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64))
    """SHA-256 of (model, session key): the key itself may be a user's name."""
    model: Mapped[str] = mapped_column(String(256))
    fingerprint: Mapped[str] = mapped_column(String(128))
    n_tokens: Mapped[int] = mapped_column(Integer)
    tier: Mapped[str] = mapped_column(String(8))
    checksum_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    hits: Mapped[int] = mapped_column(Integer, default=0)
    last_used_at: Mapped[datetime] = mapped_column(
        Timestamp, default=utcnow, server_default=func.current_timestamp()
    )


# --- security --------------------------------------------------------------------------------


class User(TimestampMixin, Base):
    """A person who logs in to the dashboard and owns API keys."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('admin', 'developer', 'viewer')", name="role"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """``usr_<random>``: also what ``inference_requests.user_id`` holds."""
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(256))
    display_name: Mapped[str | None] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    """argon2id; None for a user who may only use keys."""
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The user's own LimitSet (rpm, tpm, max_parallel, budget_usd, budget_period)."""
    last_login_at: Mapped[datetime | None] = mapped_column(Timestamp)


class ApiKey(Base):
    """An API key. The key itself is never stored: only a keyed hash (HMAC-SHA256 with the
    server secret) to look it up, and its first characters to recognize it."""

    __tablename__ = "api_keys"
    __table_args__ = (Index(None, "owner_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """``key_<random>``: also what ``inference_requests.api_key_id`` holds."""
    name: Mapped[str] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16), default="developer")
    allowed_models: Mapped[list[Any] | None] = mapped_column(JSON)
    """None: every model."""
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    max_parallel: Mapped[int | None] = mapped_column(Integer)
    budget_usd: Mapped[float | None] = mapped_column(Money)
    budget_period: Mapped[str] = mapped_column(String(16), default="month")
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(
        Timestamp, default=utcnow, server_default=func.current_timestamp()
    )
    created_by: Mapped[str | None] = mapped_column(String(128))


class RefreshToken(Base):
    """A dashboard session's refresh token (by its id). Tokens of one login form a family:
    each refresh spends one and issues the next; a spent one shown again revokes the family."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (Index(None, "family_id"), Index(None, "user_id"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    issued_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


class SigningKey(Base):
    """An RS256 key pair for access tokens; the private half encrypted with the server
    secret. Old keys stay (for verification) until their last token has expired."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16), default="RS256")
    public_pem: Mapped[str] = mapped_column(Text)
    private_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(Timestamp)
    """No longer signs; still verifies until ``expires_at``."""
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)


class RevokedToken(Base):
    """The denylist: access tokens logged out before they expire (by ``jti``)."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


# --- audit -----------------------------------------------------------------------------------


class AuditEntry(Base):
    """An administrative action. Append-only: triggers refuse UPDATE and DELETE."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index(None, "actor", "created_at"),
        Index(None, "target_type", "target_id"),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(
        Timestamp, default=utcnow, server_default=func.current_timestamp(), index=True
    )
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(64))
    target_id: Mapped[str | None] = mapped_column(String(256))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(64))
    ip_address: Mapped[str | None] = mapped_column(String(64))


metadata = Base.metadata


def table_of(model: type[Base]) -> Table:
    """A mapped class's table, typed as a Table (SQLAlchemy types it as any FromClause)."""
    return cast(Table, model.__table__)
