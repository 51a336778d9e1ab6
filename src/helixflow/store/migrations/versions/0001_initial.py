"""Initial schema: catalogue, telemetry, agents, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 13:31:56.226248
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("capabilities", sa.JSON(), nullable=True),
        sa.Column("preferences", sa.JSON(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.UniqueConstraint("name", name=op.f("uq_agents_name")),
    )
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.String(length=256), nullable=True),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(
        op.f("ix_audit_log_actor_created_at"), "audit_log", ["actor", "created_at"], unique=False
    )
    op.create_index(op.f("ix_audit_log_created_at"), "audit_log", ["created_at"], unique=False)
    op.create_index(
        op.f("ix_audit_log_target_type_target_id"),
        "audit_log",
        ["target_type", "target_id"],
        unique=False,
    )

    op.create_table(
        "inference_requests",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("client_request_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.String(length=64), nullable=True),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("end_user", sa.String(length=256), nullable=True),
        sa.Column("agent_id", sa.String(length=128), nullable=True),
        sa.Column("requested_model", sa.String(length=256), nullable=True),
        sa.Column("served_model", sa.String(length=256), nullable=True),
        sa.Column("provider", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("http_status", sa.SmallInteger(), nullable=False),
        sa.Column("error_type", sa.String(length=64), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("ttft_ms", sa.Double(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=18, scale=10, asdecimal=False), nullable=False),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("experiment_id", sa.String(length=64), nullable=True),
        sa.Column("experiment_arm", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_requests")),
        sa.UniqueConstraint("request_id", name=op.f("uq_inference_requests_request_id")),
    )
    op.create_index(
        op.f("ix_inference_requests_agent_id_created_at"),
        "inference_requests",
        ["agent_id", "created_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_inference_requests_api_key_id_created_at"),
        "inference_requests",
        ["api_key_id", "created_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_inference_requests_created_at"), "inference_requests", ["created_at"], unique=False
    )
    op.create_index(
        op.f("ix_inference_requests_provider_created_at"),
        "inference_requests",
        ["provider", "created_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_inference_requests_served_model_created_at"),
        "inference_requests",
        ["served_model", "created_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_inference_requests_user_id_created_at"),
        "inference_requests",
        ["user_id", "created_at"],
        unique=False,
    )

    op.create_table(
        "providers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("base_url", sa.String(length=1024), nullable=False),
        sa.Column("api_key_env", sa.String(length=128), nullable=True),
        sa.Column("region", sa.String(length=64), nullable=True),
        sa.Column("weight", sa.Double(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_providers")),
        sa.UniqueConstraint("name", name=op.f("uq_providers_name")),
    )
    op.create_table(
        "routing_decisions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_model", sa.String(length=256), nullable=True),
        sa.Column("strategy", sa.String(length=64), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=True),
        sa.Column("chosen_target", sa.String(length=256), nullable=True),
        sa.Column("reason", sa.String(length=1024), nullable=True),
        sa.Column("fallback_attempts", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=True),
        sa.Column("decision_ms", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_decisions")),
        sa.UniqueConstraint("request_id", name=op.f("uq_routing_decisions_request_id")),
    )
    op.create_index(
        op.f("ix_routing_decisions_chosen_target_created_at"),
        "routing_decisions",
        ["chosen_target", "created_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_routing_decisions_created_at"), "routing_decisions", ["created_at"], unique=False
    )

    op.create_table(
        "agent_connections",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column(
            "source_agent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "target_agent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("relation", sa.String(length=64), nullable=False),
        sa.Column("weight", sa.Double(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "source_agent_id <> target_agent_id", name=op.f("ck_agent_connections_not_self")
        ),
        sa.ForeignKeyConstraint(
            ["source_agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_connections_source_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["target_agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_connections_target_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_connections")),
        sa.UniqueConstraint(
            "source_agent_id",
            "target_agent_id",
            "relation",
            name=op.f("uq_agent_connections_source_agent_id_target_agent_id_relation"),
        ),
    )
    op.create_index(
        op.f("ix_agent_connections_target_agent_id"),
        "agent_connections",
        ["target_agent_id"],
        unique=False,
    )

    op.create_table(
        "models",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column(
            "provider_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("upstream_name", sa.String(length=256), nullable=True),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("context_window", sa.Integer(), nullable=True),
        sa.Column(
            "input_price_per_mtok",
            sa.Numeric(precision=18, scale=10, asdecimal=False),
            nullable=False,
        ),
        sa.Column(
            "output_price_per_mtok",
            sa.Numeric(precision=18, scale=10, asdecimal=False),
            nullable=False,
        ),
        sa.Column("capabilities", sa.JSON(), nullable=True),
        sa.Column("quality", sa.JSON(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["providers.id"],
            name=op.f("fk_models_provider_id_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_index(op.f("ix_models_provider_id"), "models", ["provider_id"], unique=False)

    op.create_table(
        "agent_model_assignments",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("agent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column(
            "assigned_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_model_assignments_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_agent_model_assignments_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_model_assignments")),
    )
    op.create_index(
        op.f("ix_agent_model_assignments_agent_id_active"),
        "agent_model_assignments",
        ["agent_id", "active"],
        unique=False,
    )
    op.create_index(
        op.f("ix_agent_model_assignments_model_id_active"),
        "agent_model_assignments",
        ["model_id", "active"],
        unique=False,
    )

    op.create_table(
        "model_versions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("artifact_uri", sa.String(length=1024), nullable=True),
        sa.Column("checksum_sha256", sa.String(length=64), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_model_versions_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("model_id", "version", name=op.f("uq_model_versions_model_id_version")),
    )
    op.create_index(
        op.f("ix_model_versions_model_id_stage"),
        "model_versions",
        ["model_id", "stage"],
        unique=False,
    )

    _append_only_guard()


def downgrade() -> None:
    _drop_append_only_guard()
    op.drop_index(op.f("ix_model_versions_model_id_stage"), table_name="model_versions")

    op.drop_table("model_versions")
    op.drop_index(
        op.f("ix_agent_model_assignments_model_id_active"), table_name="agent_model_assignments"
    )
    op.drop_index(
        op.f("ix_agent_model_assignments_agent_id_active"), table_name="agent_model_assignments"
    )

    op.drop_table("agent_model_assignments")
    op.drop_index(op.f("ix_models_provider_id"), table_name="models")

    op.drop_table("models")
    op.drop_index(op.f("ix_agent_connections_target_agent_id"), table_name="agent_connections")

    op.drop_table("agent_connections")
    op.drop_index(op.f("ix_routing_decisions_created_at"), table_name="routing_decisions")
    op.drop_index(
        op.f("ix_routing_decisions_chosen_target_created_at"), table_name="routing_decisions"
    )

    op.drop_table("routing_decisions")
    op.drop_table("providers")
    op.drop_index(op.f("ix_inference_requests_user_id_created_at"), table_name="inference_requests")
    op.drop_index(
        op.f("ix_inference_requests_served_model_created_at"), table_name="inference_requests"
    )
    op.drop_index(
        op.f("ix_inference_requests_provider_created_at"), table_name="inference_requests"
    )
    op.drop_index(op.f("ix_inference_requests_created_at"), table_name="inference_requests")
    op.drop_index(
        op.f("ix_inference_requests_api_key_id_created_at"), table_name="inference_requests"
    )
    op.drop_index(
        op.f("ix_inference_requests_agent_id_created_at"), table_name="inference_requests"
    )

    op.drop_table("inference_requests")
    op.drop_index(op.f("ix_audit_log_target_type_target_id"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_created_at"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_actor_created_at"), table_name="audit_log")

    op.drop_table("audit_log")
    op.drop_table("agents")


# audit_log is append-only: the database itself refuses UPDATE and DELETE on it.
_SQLITE_GUARDS = {
    "audit_log_no_update": "BEFORE UPDATE",
    "audit_log_no_delete": "BEFORE DELETE",
}


def _append_only_guard() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for name, when in _SQLITE_GUARDS.items():
            op.execute(
                f"CREATE TRIGGER {name} {when} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )


def _drop_append_only_guard() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for name in _SQLITE_GUARDS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
