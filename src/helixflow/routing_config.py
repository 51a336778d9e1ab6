"""The router's and the upstream providers' sections of the settings tree (see ``config.py``).

A provider is any OpenAI-compatible API; its models become router targets named
``<provider>/<model>``. Groups are virtual models (``auto``, ``fast``...) that let the router
choose among targets with a named strategy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

Capability = Literal[
    "chat", "completions", "tools", "json", "embeddings", "vision", "code", "reasoning"
]
CAPABILITIES: tuple[str, ...] = (
    "chat",
    "completions",
    "tools",
    "json",
    "embeddings",
    "vision",
    "code",
    "reasoning",
)
DEFAULT_CAPABILITIES: list[Capability] = ["chat", "completions", "tools", "json"]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"


class TargetTraits(BaseModel):
    """What the router knows about a model it may send requests to (local or upstream)."""

    context_window: int | None = Field(
        default=None, ge=1, description="Prompt plus completion tokens the model accepts."
    )
    input_price_per_mtok: float = Field(default=0.0, ge=0, description="USD per 1M input tokens.")
    output_price_per_mtok: float = Field(default=0.0, ge=0, description="USD per 1M output tokens.")
    capabilities: list[Capability] | None = Field(
        default=None,
        description="What requests it can serve: chat, completions, tools, json, embeddings, "
        "vision, code, reasoning. Default: chat, completions, tools, json (embeddings for "
        "embedding models).",
    )
    quality: dict[str, float] = Field(
        default_factory=dict,
        description="Quality scores in [0, 1] per task category (`general`, `code`, ...); "
        "`general` is used for a category that is not listed.",
    )
    region: str | None = None
    weight: float = Field(default=1.0, ge=0, description="Share for the weighted strategy.")
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Requests in flight at once (and assignment capacity)."
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Models or targets tried, in order, when this one fails or is unavailable.",
    )

    @field_validator("quality")
    @classmethod
    def _scores(cls, quality: dict[str, float]) -> dict[str, float]:
        for category, score in quality.items():
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"quality[{category!r}] must lie in [0, 1], not {score}")
        return quality


class ProviderModelConfig(TargetTraits):
    """One model served by a provider."""

    name: str = Field(min_length=1, max_length=200, description="The model's name upstream.")
    aliases: list[str] = Field(default_factory=list, description="Other names clients may send.")


class ProviderConfig(BaseModel):
    """An upstream OpenAI-compatible API."""

    name: str = Field(min_length=1, max_length=64, pattern=_NAME)
    base_url: str = Field(
        min_length=1, description="Base URL including the version path, e.g. https://host/v1."
    )
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key."
    )
    api_key_file: Path | None = Field(
        default=None, description="File holding the API key (a mounted secret)."
    )
    models: list[str | ProviderModelConfig] = Field(
        min_length=1, description="Model names, or objects with their traits."
    )
    region: str | None = None
    weight: float = Field(default=1.0, ge=0)
    max_concurrency: int = Field(
        default=256, ge=1, le=100_000, description="Connections kept to the provider."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(
        default=600.0, gt=0, description="Longest a request may take, first byte to last."
    )
    first_byte_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest wait for the response to start."
    )
    probe: bool = Field(default=True, description="Probe `GET /models` in the background.")
    enabled: bool = True

    @field_validator("base_url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _one_key_source(self) -> ProviderConfig:
        if self.api_key_env and self.api_key_file:
            raise ValueError(f"provider {self.name!r}: set api_key_env or api_key_file, not both")
        return self

    def api_key(self) -> str | None:
        """The key from its environment variable or secret file (never stored elsewhere).

        Raises ValueError naming the variable or file when it is configured but empty."""
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()
            if not key:
                raise ValueError(
                    f"provider {self.name!r}: environment variable {self.api_key_env} is not set"
                )
            return key
        if self.api_key_file:
            try:
                key = self.api_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"provider {self.name!r}: cannot read api_key_file {self.api_key_file}: {exc}"
                ) from exc
            if not key:
                raise ValueError(
                    f"provider {self.name!r}: api_key_file {self.api_key_file} is empty"
                )
            return key
        return None

    def model_configs(self) -> list[ProviderModelConfig]:
        return [ProviderModelConfig(name=m) if isinstance(m, str) else m for m in self.models]


class GroupConfig(BaseModel):
    """A virtual model: a request for it lets the router choose among ``targets``."""

    name: str = Field(min_length=1, max_length=128, pattern=_NAME)
    targets: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Models or targets (`provider/model`) in the group; `*` is every "
        "generation model, `<provider>/*` every model of a provider.",
    )
    strategy: str = Field(default="weighted", description="Strategy name (see docs/router.md).")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Strategy options: quality_floor, budget_usd, category, latency_weight...",
    )
    affinity: Literal["none", "session", "prefix"] = Field(
        default="session",
        description="Send a conversation back to the target that served it while that target "
        "is healthy: `session` keys on the session id (`X-Session-Id`, else the body's "
        "`user`), `prefix` also on the prompt's opening characters (which pins every request "
        "sharing a system prompt to one target: use it for few, long conversations).",
    )


class RetryConfig(BaseModel):
    attempts: int = Field(
        default=2, ge=1, le=10, description="Tries per target on connect errors, 429 and 5xx."
    )
    backoff_s: float = Field(default=0.1, gt=0, description="First retry delay (doubles).")
    backoff_max_s: float = Field(default=2.0, gt=0)
    retry_after_max_s: float = Field(
        default=5.0,
        ge=0,
        description="Longest Retry-After honoured in place; a longer one moves on to the next "
        "target.",
    )
    max_fallbacks: int = Field(default=3, ge=0, le=20, description="Targets tried after the first.")


class BreakerConfig(BaseModel):
    """Circuit breaker per target: closed -> open after failures -> half-open after a pause."""

    failure_threshold: int = Field(
        default=5, ge=1, description="Consecutive failures that open the circuit."
    )
    failure_rate: float = Field(
        default=0.5, gt=0, le=1, description="Failure share over the window that opens it."
    )
    window_s: float = Field(default=60.0, gt=0)
    min_requests: int = Field(default=20, ge=1, description="Requests before the rate counts.")
    open_s: float = Field(default=30.0, gt=0, description="Pause before a half-open trial.")
    half_open_requests: int = Field(
        default=1, ge=1, description="Trial requests let through while half-open."
    )


class ResponseCacheConfig(BaseModel):
    """Exact-match cache of deterministic replies (temperature 0 or a seed).

    Off by default: a cached reply skips the model, which surprises anyone measuring it."""

    enabled: bool = False
    backend: Literal["memory", "redis"] = Field(
        default="memory", description="`redis` shares the cache between replicas."
    )
    ttl_s: float = Field(default=600.0, gt=0)
    max_bytes: int = Field(default=64 * 1024**2, ge=0, description="Memory backend budget.")
    max_entry_bytes: int = Field(default=1024**2, ge=1, description="Larger replies are not kept.")
    key_prefix: str = "helixflow:cache:"


class AlertConfig(BaseModel):
    """Rules checked on every target; a firing alert is logged, stored and posted."""

    enabled: bool = True
    interval_s: float = Field(default=30.0, gt=0)
    window_s: float = Field(default=300.0, gt=0)
    min_requests: int = Field(default=20, ge=1)
    error_rate: float = Field(default=0.2, gt=0, le=1)
    latency_p95_ms: float = Field(default=30_000.0, gt=0)
    open_circuits: int = Field(default=1, ge=1, description="Open circuits that fire an alert.")
    webhook_url: str | None = Field(default=None, description="POSTed a JSON body per alert.")
    cooldown_s: float = Field(default=600.0, ge=0, description="Quiet time per rule and target.")


class RouterConfig(BaseModel):
    """How requests are spread over local models and providers (docs/router.md)."""

    groups: list[GroupConfig] = Field(
        default_factory=lambda: [GroupConfig(name="auto")],
        description="Virtual models; `auto` spans every generation model by default.",
    )
    default_strategy: str = Field(
        default="weighted", description="For a model served by several providers."
    )
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    cache: ResponseCacheConfig = Field(default_factory=ResponseCacheConfig)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    probe_interval_s: float = Field(default=15.0, gt=0, description="Active health probes.")
    affinity_ttl_s: float = Field(default=3600.0, gt=0)
    affinity_max_entries: int = Field(default=100_000, ge=0)
    prefix_affinity_chars: int = Field(
        default=1024, ge=16, description="Prompt characters that key prefix affinity."
    )
    ewma_alpha: float = Field(default=0.2, gt=0, le=1, description="Latency smoothing.")


class RedisConfig(BaseModel):
    url: str | None = Field(
        default=None, description="redis://host:6379/0; `HELIXFLOW_REDIS_URL` sets it."
    )
