"""``providers`` and ``models``: the router's catalogue as rows.

:meth:`CatalogueRepository.sync` writes what the configuration declares (so that assignments
and analytics can refer to models by row id); :meth:`CatalogueRepository.extra_targets` reads
back the models an administrator added to the tables, so the router serves them too.

A provider row says where its key is read from (``api_key_env``), never the key itself; extra
request headers (which may carry credentials) are not stored either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from sqlalchemy import RowMapping, Table, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from helixflow.router.catalogue import Target
from helixflow.routing_config import DEFAULT_CAPABILITIES, ProviderConfig
from helixflow.store.database import Database
from helixflow.store.schema import Model, Provider, table_of, utcnow

log = logging.getLogger(__name__)

_PROVIDERS = table_of(Provider)
_MODELS = table_of(Model)

LOCAL_BACKEND = "llamacpp"
UPSTREAM_BACKEND = "openai"

_PROVIDER_FIELDS = ("base_url", "api_key_env", "region", "weight", "max_concurrency", "enabled")
_MODEL_FIELDS = (
    "provider_id",
    "upstream_name",
    "backend",
    "context_window",
    "input_price_per_mtok",
    "output_price_per_mtok",
    "capabilities",
    "quality",
    "enabled",
)


class CatalogueError(ValueError):
    """The catalogue cannot be written as given (a target of a provider nobody declared)."""


def provider_row(provider: ProviderConfig) -> dict[str, Any]:
    """The ``providers`` row of a configured provider (the key's variable name, not the key)."""
    return {
        "name": provider.name,
        "base_url": provider.base_url,
        "api_key_env": provider.api_key_env,
        "region": provider.region,
        "weight": float(provider.weight),
        "max_concurrency": provider.max_concurrency,
        "enabled": provider.enabled,
    }


def model_row(target: Target, provider_id: int | None) -> dict[str, Any]:
    """The ``models`` row of a target; its name is the target id."""
    return {
        "name": target.id,
        "provider_id": provider_id,
        "upstream_name": target.upstream_model,
        "backend": LOCAL_BACKEND if target.local else UPSTREAM_BACKEND,
        "context_window": target.context_window,
        "input_price_per_mtok": float(target.input_price_per_mtok),
        "output_price_per_mtok": float(target.output_price_per_mtok),
        "capabilities": sorted(target.capabilities),
        "quality": {k: float(v) for k, v in sorted(target.quality.items())},
        "enabled": True,
    }


class CatalogueRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def sync(
        self, providers: Sequence[ProviderConfig], targets: Iterable[Target]
    ) -> dict[str, int]:
        """Upsert the providers and the targets' models (by name); returns target id -> row id.

        Idempotent: rows that already say the same are not written. Rows of providers or
        models no longer configured are left as they are (an administrator may have added
        them, and old assignments refer to them).
        """
        targets = list(targets)
        async with self.database.engine.begin() as conn:
            await _upsert(conn, _PROVIDERS, [provider_row(p) for p in providers], _PROVIDER_FIELDS)
            names = {t.provider for t in targets if not t.local}
            provider_ids = await _ids(conn, _PROVIDERS, names)
            rows = []
            for target in targets:
                provider_id = None
                if not target.local:
                    provider_id = provider_ids.get(target.provider)
                    if provider_id is None:
                        raise CatalogueError(
                            f"target {target.id!r} belongs to provider {target.provider!r}, "
                            "which is neither configured nor in the providers table"
                        )
                rows.append(model_row(target, provider_id))
            await _upsert(conn, _MODELS, rows, _MODEL_FIELDS)
            return await _ids(conn, _MODELS, {t.id for t in targets})

    async def extra_targets(self, known: set[str]) -> list[Target]:
        """Targets of enabled model rows of enabled providers that ``known`` does not name.

        Local rows (no provider) are not served from the table: a local model needs its
        engine, which only the configuration starts.
        """
        stmt = (
            select(
                _MODELS.c.name,
                _MODELS.c.upstream_name,
                _MODELS.c.context_window,
                _MODELS.c.input_price_per_mtok,
                _MODELS.c.output_price_per_mtok,
                _MODELS.c.capabilities,
                _MODELS.c.quality,
                _PROVIDERS.c.name.label("provider"),
                _PROVIDERS.c.region,
                _PROVIDERS.c.weight,
                _PROVIDERS.c.max_concurrency,
            )
            .join(_PROVIDERS, _PROVIDERS.c.id == _MODELS.c.provider_id)
            .where(_MODELS.c.enabled.is_(true()), _PROVIDERS.c.enabled.is_(true()))
            .order_by(_MODELS.c.id)
        )
        async with self.database.engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [_target(row) for row in rows if row["name"] not in known]

    async def model_ids(self, names: Iterable[str]) -> dict[str, int]:
        """``models`` row ids by name, for the names that have a row."""
        async with self.database.engine.connect() as conn:
            return await _ids(conn, _MODELS, set(names))


def _target(row: RowMapping) -> Target:
    name: str = row["name"]
    provider: str = row["provider"]
    model = name.removeprefix(f"{provider}/")
    capabilities = row["capabilities"]
    if not isinstance(capabilities, list) or not capabilities:
        capabilities = list(DEFAULT_CAPABILITIES)
    quality = row["quality"] if isinstance(row["quality"], dict) else {}
    return Target(
        id=name,
        model=model,
        provider=provider,
        upstream_model=row["upstream_name"] or model,
        kind="upstream",
        capabilities=frozenset(str(c) for c in capabilities),
        context_window=row["context_window"],
        input_price_per_mtok=float(row["input_price_per_mtok"] or 0.0),
        output_price_per_mtok=float(row["output_price_per_mtok"] or 0.0),
        quality=MappingProxyType(
            {str(k): float(v) for k, v in quality.items() if isinstance(v, int | float)}
        ),
        region=row["region"],
        weight=float(row["weight"] if row["weight"] is not None else 1.0),
        max_concurrency=row["max_concurrency"],
    )


async def _ids(conn: AsyncConnection, table: Table, names: set[str]) -> dict[str, int]:
    if not names:
        return {}
    out: dict[str, int] = {}
    ordered = sorted(names)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        result = await conn.execute(select(table.c.name, table.c.id).where(table.c.name.in_(chunk)))
        out.update({name: int(id_) for name, id_ in result.all()})
    return out


def _same(existing: Mapping[str, Any], row: Mapping[str, Any], fields: Iterable[str]) -> bool:
    for field in fields:
        old, new = existing[field], row[field]
        if isinstance(new, float) and isinstance(old, int | float):
            if abs(float(old) - new) > 1e-9 * max(1.0, abs(new)):
                return False
        elif old != new:
            return False
    return True


async def _upsert(
    conn: AsyncConnection, table: Table, rows: list[dict[str, Any]], fields: Sequence[str]
) -> None:
    """Insert rows new by ``name``, update those whose ``fields`` changed, leave the rest."""
    if not rows:
        return
    names = [r["name"] for r in rows]
    existing: dict[str, Mapping[str, Any]] = {}
    for start in range(0, len(names), 500):
        result = await conn.execute(
            select(table).where(table.c.name.in_(names[start : start + 500]))
        )
        existing.update({row["name"]: row for row in result.mappings().all()})
    changed = [
        r for r in rows if r["name"] not in existing or not _same(existing[r["name"]], r, fields)
    ]
    if not changed:
        return
    now = utcnow()
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        module = postgresql if dialect == "postgresql" else sqlite
        stmt = module.insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={**{f: stmt.excluded[f] for f in fields}, "updated_at": stmt.excluded.updated_at},
        )
        await conn.execute(stmt, [{**r, "created_at": now, "updated_at": now} for r in changed])
        return
    for row in changed:  # other dialects: the rows were read in this transaction
        if row["name"] in existing:
            values = {f: row[f] for f in fields}
            await conn.execute(
                update(table).where(table.c.name == row["name"]).values(**values, updated_at=now)
            )
        else:
            await conn.execute(table.insert().values(**row, created_at=now, updated_at=now))
