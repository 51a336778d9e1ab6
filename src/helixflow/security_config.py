"""The security section of the settings tree (see ``config.py`` and docs/security.md).

Who may call (API keys, users and their roles, dashboard sessions as RS256 JWTs), how much
(requests and tokens per minute, parallel requests, spend per period) and the hardening of
the HTTP surface (CORS, security headers, CSRF).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

BudgetPeriod = Literal["day", "week", "month", "total"]


class BootstrapAdmin(BaseModel):
    """The first administrator, created at start when no user exists yet."""

    username: str = Field(default="admin", min_length=1, max_length=64)
    password_env: str | None = Field(
        default="HELIXFLOW_ADMIN_PASSWORD",
        description="Environment variable holding the password (nothing is created when unset).",
    )
    password_file: Path | None = Field(default=None, description="Or a file holding it.")

    def password(self) -> str | None:
        """The configured password, or None when none is configured."""
        if self.password_file is not None:
            try:
                text = self.password_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read bootstrap_admin.password_file: {exc}") from exc
            return text or None
        if self.password_env:
            return os.environ.get(self.password_env) or None
        return None


class LimitSet(BaseModel):
    """Limits of one subject (a key, a user, a model); None means no limit."""

    rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(
        default=None, ge=1, description="Tokens (prompt + completion) per minute."
    )
    max_parallel: int | None = Field(default=None, ge=1, description="Requests in flight at once.")
    budget_usd: float | None = Field(default=None, ge=0, description="Spend allowed per period.")
    budget_period: BudgetPeriod = "month"


class LimitsConfig(BaseModel):
    backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="`redis` (with HELIXFLOW_REDIS_URL) holds limits exactly across replicas.",
    )
    user_defaults: LimitSet = Field(
        default_factory=LimitSet, description="Limits of every user without their own."
    )
    models: dict[str, LimitSet] = Field(
        default_factory=dict, description="Limits per requested model, over all callers."
    )
    key_prefix: str = "helixflow:limits:"


class CorsConfig(BaseModel):
    allow_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call from a browser; none by default."
    )
    allow_credentials: bool = False
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "DELETE", "PATCH"])
    allow_headers: list[str] = Field(
        default_factory=lambda: [
            "Authorization",
            "Content-Type",
            "X-Request-Id",
            "X-Session-Id",
            "X-Agent-Id",
            "X-CSRF-Token",
        ]
    )
    max_age_s: int = Field(default=600, ge=0)

    @model_validator(mode="after")
    def _valid(self) -> CorsConfig:
        from helixflow.security.cors import cors_middleware_kwargs  # it imports this module

        cors_middleware_kwargs(self)
        return self


class SecurityConfig(BaseModel):
    """Authentication, authorization, limits and hardening (docs/security.md)."""

    auth: Literal["auto", "required", "off"] = Field(
        default="auto",
        description="`auto`: required as soon as any API key or user exists; before that, "
        "allowed off only on a loopback address (serve refuses any other address). "
        "`required`: always. `off`: never (loopback only).",
    )
    secret_env: str | None = Field(
        default="HELIXFLOW_SECRET",
        description="Environment variable holding the server secret (keys' hashes, "
        "encrypted signing keys); share it between replicas.",
    )
    secret_file: Path | None = Field(
        default=None,
        description="Or a file holding it. Neither set: `secret` in the data directory, "
        "created once (mode 0600).",
    )
    bootstrap_admin: BootstrapAdmin = Field(default_factory=BootstrapAdmin)
    access_token_ttl_s: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_s: int = Field(default=14 * 86_400, ge=60)
    signing_key_rotation_s: int = Field(
        default=7 * 86_400, ge=60, description="A new signing key (new `kid`) this often."
    )
    cookie_secure: bool = Field(
        default=True, description="Session cookies only over HTTPS (turn off for plain-HTTP dev)."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    login_attempts_per_minute: int = Field(
        default=10, ge=1, description="Per client address and per user name."
    )
    security_headers: bool = True

    @model_validator(mode="after")
    def _one_secret_source(self) -> SecurityConfig:
        if self.secret_file is not None and self.secret_env and os.environ.get(self.secret_env):
            raise ValueError("set security.secret_env's variable or security.secret_file, not both")
        return self
