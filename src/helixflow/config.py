"""One settings tree for the whole process.

Sources, highest precedence first: explicit overrides (CLI flags), environment variables
(``HELIXFLOW_*``, nested with ``__``, e.g. ``HELIXFLOW_SERVER__PORT=9000``), an optional YAML
file (``--config helixflow.yaml`` or ``HELIXFLOW_CONFIG``), then defaults that work on a laptop.
No other module reads ``os.environ`` (``routing_config.py`` and ``security_config.py``, parts of
this tree, read providers' API keys and the server's secrets).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from helixflow.observability_config import ObservabilityConfig
from helixflow.routing_config import (
    ProviderConfig,
    RedisConfig,
    RouterConfig,
    TargetTraits,
)
from helixflow.security_config import SecurityConfig

DEFAULT_MODEL_ID = "smollm2-135m"
CONFIG_ENV_VAR = "HELIXFLOW_CONFIG"


class ModelConfig(TargetTraits):
    """One model the engine loads and serves (and the router's traits for it)."""

    id: str = Field(min_length=1, max_length=128, description="Name clients send as `model`.")
    path: Path | None = Field(default=None, description="Path to a GGUF file.")
    bundled: str | None = Field(
        default=None, description="Name of a model shipped in a Python package (see `models list`)."
    )
    aliases: list[str] = Field(default_factory=list, description="Other names for this model.")
    backend: Literal["llamacpp"] = Field(
        default="llamacpp", description="Inference backend that serves this model."
    )
    context_size: int = Field(
        default=16384,
        ge=256,
        le=1 << 22,
        description="Total KV-cache budget in tokens for all parallel sequences. Each "
        "sequence may use context_size / parallel (rounded up to 256) unless kv_unified.",
    )
    parallel: int = Field(default=8, ge=1, le=256, description="Maximum parallel sequences.")
    batch_size: int = Field(
        default=512, ge=16, le=8192, description="Most tokens in one decode step (n_batch)."
    )
    prefill_chunk: int = Field(
        default=256,
        ge=8,
        le=8192,
        description="Most prompt tokens one sequence feeds per step, so long prompts "
        "interleave with other streams' decoding.",
    )
    threads: int | None = Field(
        default=None, ge=1, le=512, description="CPU threads for decoding (default: all cores)."
    )
    max_queue: int = Field(
        default=128,
        ge=0,
        le=100_000,
        description="Requests that may wait for a free slot; beyond that they get 429.",
    )
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template overriding the GGUF's own: inline text or a file path.",
    )
    kv_unified: bool = Field(
        default=False,
        description="One KV pool that any sequence may fill up to context_size (idle prefixes "
        "are dropped and the youngest sequence preempted when it runs out). Off by default: "
        "llama.cpp's results then depend on where cells sit in the pool, so a temperature-0 "
        "reply could change with server history.",
    )
    prefix_cache: bool = Field(
        default=True, description="Reuse KV of matching prompt prefixes between requests."
    )
    flash_attention: Literal["auto", "on", "off"] = Field(
        default="off",
        description="llama.cpp flash attention. 'off' keeps temperature-0 replies identical "
        "whether or not a cached prefix was reused.",
    )
    owned_by: str = "helixflow"
    embedding: bool = Field(
        default=False,
        description="Serve this model on /v1/embeddings instead of chat and completions. "
        "`parallel` is then the most inputs embedded in one decode and `batch_size` the most "
        "tokens in one decode, which is also the longest input (a pooled input must fit one "
        "micro-batch); `context_size`, `prefill_chunk` and the KV options do not apply.",
    )
    pooling: Literal["mean", "cls", "last"] | None = Field(
        default=None,
        description="How an embedding model pools token states into one vector: their mean, "
        "the first token's (BERT-style CLS) or the last token's. Default: the pooling the GGUF "
        "declares, else mean.",
    )
    normalize: bool = Field(
        default=True, description="Scale embedding vectors to unit length (L2)."
    )
    matryoshka_dims: list[int] | None = Field(
        default=None,
        description="For embedding models trained to be truncated (Matryoshka): the sizes a "
        "request may ask for with `dimensions`; the vector is cut to that size and scaled "
        "back to unit length. Unset: `dimensions` other than the model's own size is refused.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.bundled is None):
            raise ValueError(f"model {self.id!r}: set exactly one of `path` or `bundled`")
        if self.context_size // self.parallel < 64:
            raise ValueError(
                f"model {self.id!r}: context_size / parallel must leave at least "
                "64 tokens per sequence"
            )
        return self

    @model_validator(mode="after")
    def _embedding_options(self) -> ModelConfig:
        if not self.embedding:
            # Compared with the defaults, not model_fields_set: load_settings round-trips dumps.
            given = [
                name
                for name, is_set in (
                    ("pooling", self.pooling is not None),
                    ("normalize", not self.normalize),
                    ("matryoshka_dims", self.matryoshka_dims is not None),
                )
                if is_set
            ]
            if given:
                raise ValueError(
                    f"model {self.id!r}: {', '.join(given)} apply only to embedding models "
                    "(set `embedding: true`)"
                )
            return self
        if self.matryoshka_dims is not None:
            dims = self.matryoshka_dims
            if not dims or min(dims) < 1 or len(set(dims)) != len(dims):
                raise ValueError(
                    f"model {self.id!r}: matryoshka_dims must be distinct positive sizes"
                )
            self.matryoshka_dims = sorted(dims)
        return self

    @property
    def names(self) -> list[str]:
        return [self.id, *self.aliases]


class ServerConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Larger request bodies get 413."
    )
    retry_after_seconds: int = Field(
        default=1, ge=1, description="Retry-After sent with 429 when a model's queue is full."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes behind the port, each a whole server that loads the "
        "models (docs/observability.md).",
    )
    tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate (chain): serve HTTPS (docs/security-hardening.md).",
    )
    tls_keyfile: Path | None = Field(default=None, description="Its PEM private key.")

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("set both server.tls_certfile and server.tls_keyfile, or neither")
        for path in (self.tls_certfile, self.tls_keyfile):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file not found: {path}")
        return self


class DatabaseConfig(BaseModel):
    """Where the control plane keeps its records (see docs/persistence.md)."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Plain driver-less URLs work as written: "
        "`postgresql://user@host:5432/db`, `sqlite:///path.db`, `hana://user:pw@host:port`. "
        "Default: a SQLite file `helixflow.db` in the data directory.",
    )
    pool_size: int = Field(default=5, ge=1, le=1000, description="Connections kept open.")
    max_overflow: int = Field(
        default=10, ge=0, le=1000, description="Extra connections opened under load."
    )
    pool_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for a free pooled connection."
    )
    pool_recycle_s: float = Field(
        default=1800.0, gt=0, description="Connections older than this are reopened."
    )
    pool_pre_ping: bool = Field(
        default=True, description="Check a pooled connection before handing it out."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one connect.")
    connect_retries: int = Field(
        default=5, ge=0, le=100, description="Retries of the first connection at startup."
    )
    retry_backoff_s: float = Field(
        default=0.5, gt=0, description="First retry delay; doubles each time, with jitter."
    )
    retry_backoff_max_s: float = Field(default=10.0, gt=0, description="Longest retry delay.")
    statement_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        description="Server-side statement timeout (PostgreSQL); busy timeout on SQLite. "
        "0 disables it.",
    )
    auto_upgrade: Literal["sqlite", "always", "never"] = Field(
        default="sqlite",
        description="Run pending migrations at startup: only on SQLite (the embedded "
        "default), on any database, or never. Otherwise `serve` refuses to start on a "
        "schema that is behind and says to run `helixflow db upgrade`.",
    )
    echo: bool = Field(default=False, description="Log every SQL statement.")


class TelemetryConfig(BaseModel):
    """The writer that records every request off the hot path."""

    enabled: bool = True
    queue_size: int = Field(
        default=100_000,
        ge=1,
        description="Events held in memory; beyond that they go straight to the disk spool.",
    )
    batch_size: int = Field(default=1000, ge=1, le=100_000, description="Rows per insert.")
    flush_interval_ms: int = Field(
        default=200, ge=1, description="Longest time an event waits in memory."
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Where events go while the database is unreachable "
        "(default: `spool/` in the data directory).",
    )
    spool_fsync: Literal["always", "interval", "never"] = Field(
        default="always",
        description="fsync the spool after every write, at most every "
        "spool_fsync_interval_ms, or leave it to the OS.",
    )
    spool_fsync_interval_ms: int = Field(default=1000, ge=1)
    spool_segment_bytes: int = Field(
        default=16 * 1024 * 1024, ge=4096, description="Size at which a spool file is sealed."
    )
    retry_interval_ms: int = Field(
        default=1000, ge=10, description="How often an unreachable database is retried."
    )
    retention_days: int = Field(
        default=30, ge=0, description="Age at which request records are pruned; 0 keeps all."
    )
    prune_interval_s: float = Field(default=3600.0, gt=0, description="How often to prune.")
    prune_batch_size: int = Field(
        default=5000, ge=1, description="Rows deleted per statement while pruning."
    )


class S3TierConfig(BaseModel):
    """The object-storage tier of the session KV store (any S3-compatible service)."""

    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = Field(default="helixflow/kv/", description="Key prefix for the blobs.")
    endpoint_url: str | None = Field(
        default=None, description="For MinIO, Ceph, moto...; default: AWS for the region."
    )
    region: str | None = None
    access_key_id_env: str | None = Field(
        default=None,
        description="Environment variable holding the access key id (default: boto3's own "
        "credential chain).",
    )
    secret_access_key_env: str | None = None
    ttl_s: float = Field(default=30 * 86400, gt=0, description="Blobs unused this long expire.")
    max_bytes: int = Field(
        default=64 * 1024**3, ge=0, description="Budget; the least recently used go first."
    )


class KVCacheConfig(BaseModel):
    """Session KV persistence: a conversation's KV state kept between turns (docs/kvstore.md)."""

    enabled: bool = True
    session_header: str = Field(
        default="X-Session-Id", description="Request header naming the conversation."
    )
    session_from_user: bool = Field(
        default=True,
        description="Without the header, use the body's `user` field as the session key.",
    )
    min_tokens: int = Field(
        default=64, ge=1, description="Shorter conversations are cheaper to recompute than save."
    )
    ram_bytes: int = Field(
        default=512 * 1024**2, ge=0, description="RAM tier budget (LRU); 0 disables the tier."
    )
    ram_ttl_s: float = Field(default=3600.0, gt=0)
    disk_dir: Path | None = Field(
        default=None, description="Disk tier directory (default: `kv/` in the data directory)."
    )
    disk_bytes: int = Field(
        default=8 * 1024**3, ge=0, description="Disk tier budget (LRU); 0 disables the tier."
    )
    disk_ttl_s: float = Field(default=7 * 86400.0, gt=0)
    zstd_level: int = Field(default=3, ge=1, le=22)
    s3: S3TierConfig | None = None


def default_models() -> list[ModelConfig]:
    return [ModelConfig(id=DEFAULT_MODEL_ID, bundled=DEFAULT_MODEL_ID)]


class Settings(BaseSettings):
    """The effective configuration of one HelixFlow process."""

    model_config = SettingsConfigDict(
        env_prefix="HELIXFLOW_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    models: list[ModelConfig] = Field(default_factory=default_models, min_length=1)
    data_dir: Path = Field(default=Path.home() / ".helixflow", description="State files.")
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    kv_cache: KVCacheConfig = Field(default_factory=KVCacheConfig)
    providers: list[ProviderConfig] = Field(
        default_factory=list, description="Upstream OpenAI-compatible APIs (docs/router.md)."
    )
    router: RouterConfig = Field(default_factory=RouterConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)

    @property
    def database_url(self) -> str:
        """The configured URL, or the embedded SQLite file in the data directory."""
        return self.database.url or f"sqlite:///{self.data_dir / 'helixflow.db'}"

    @property
    def spool_dir(self) -> Path:
        return self.telemetry.spool_dir or self.data_dir / "spool"

    @property
    def kv_dir(self) -> Path:
        return self.kv_cache.disk_dir or self.data_dir / "kv"

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for model in models:
            for name in model.names:
                if name in seen:
                    raise ValueError(f"model name {name!r} is used twice")
                seen.add(name)
        return models

    @field_validator("providers")
    @classmethod
    def _unique_providers(cls, providers: list[ProviderConfig]) -> list[ProviderConfig]:
        names = [p.name for p in providers]
        for name in names:
            if name == "local" or names.count(name) > 1:
                raise ValueError(f"provider name {name!r} is reserved or used twice")
        return providers


FLAT_ENV_ALIASES: dict[str, tuple[str, str]] = {
    "HELIXFLOW_DATABASE_URL": ("database", "url"),
    "HELIXFLOW_REDIS_URL": ("redis", "url"),
    # OpenTelemetry's standard variables (the traces-specific one wins over the generic one).
    "OTEL_SERVICE_NAME": ("observability", "service_name"),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("observability", "otlp_endpoint"),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ("observability", "otlp_endpoint"),
}
"""Well-known single-level variables, read below their ``__`` spellings."""


class _FlatEnvAliases(PydanticBaseSettingsSource):
    """``HELIXFLOW_DATABASE_URL`` as users write it, beside ``HELIXFLOW_DATABASE__URL``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for var, (section, key) in FLAT_ENV_ALIASES.items():
            if os.environ.get(var):
                values.setdefault(section, {})[key] = os.environ[var]
        return values


def _settings_class(config_file: Path | None) -> type[Settings]:
    """A Settings subclass that also reads ``config_file`` (below env vars in precedence)."""

    class FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [
                init_settings,
                env_settings,
                _FlatEnvAliases(settings_cls),
            ]
            if config_file is not None:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
            return tuple(sources)

    return FileSettings


class ConfigFileError(ValueError):
    """The configuration file is missing or unreadable."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, the YAML file, the environment and ``overrides``."""
    if config_file is None and os.environ.get(CONFIG_ENV_VAR):
        config_file = Path(os.environ[CONFIG_ENV_VAR])
    if config_file is not None and not config_file.is_file():
        raise ConfigFileError(f"configuration file not found: {config_file}")
    cls = _settings_class(config_file)
    settings = cls(**{k: v for k, v in overrides.items() if v is not None})
    return Settings.model_validate(settings.model_dump())
