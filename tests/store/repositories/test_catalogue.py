"""CatalogueRepository on SQLite and PostgreSQL: syncing providers and models, extra targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from helixflow.config import ModelConfig
from helixflow.router.catalogue import Catalogue, Target, local_target, upstream_target
from helixflow.routing_config import ProviderConfig, ProviderModelConfig
from helixflow.store.database import Database
from helixflow.store.repositories.catalogue import CatalogueError, CatalogueRepository
from helixflow.store.schema import Model, Provider, table_of

SECRET = "sk-live-do-not-store-0123456789"


def providers(tmp_path: Path) -> list[ProviderConfig]:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET)
    return [
        ProviderConfig(
            name="acme",
            base_url="http://127.0.0.1:9000/v1/",
            api_key_env="ACME_API_KEY",
            region="eu",
            weight=2.0,
            max_concurrency=4,
            models=[
                "gpt-4o-mini",
                ProviderModelConfig(
                    name="big",
                    context_window=128_000,
                    input_price_per_mtok=2.5,
                    output_price_per_mtok=10.0,
                    capabilities=["chat", "vision"],
                    quality={"general": 0.9, "code": 0.8},
                ),
            ],
        ),
        ProviderConfig(
            name="vault",
            base_url="https://vault.example/v1",
            api_key_file=key_file,
            headers={"Authorization": f"Bearer {SECRET}"},
            models=["m"],
            enabled=False,
        ),
    ]


def catalogue_targets(configs: list[ProviderConfig]) -> list[Target]:
    local = local_target(ModelConfig(id="tiny", path=Path("/models/tiny.gguf"), parallel=2))
    return [local] + [upstream_target(p, m) for p in configs for m in p.model_configs()]


async def rows(database: Database, model: type[Provider] | type[Model]) -> dict[str, Any]:
    async with database.engine.connect() as conn:
        result = await conn.execute(select(table_of(model)))
        return {row["name"]: dict(row) for row in result.mappings().all()}


async def test_sync_writes_providers_and_models(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_API_KEY", SECRET)
    configs = providers(tmp_path)
    ids = await CatalogueRepository(database).sync(configs, catalogue_targets(configs))

    assert set(ids) == {"local/tiny", "acme/gpt-4o-mini", "acme/big", "vault/m"}
    provider_rows = await rows(database, Provider)
    acme = provider_rows["acme"]
    assert (acme["base_url"], acme["api_key_env"], acme["region"]) == (
        "http://127.0.0.1:9000/v1",
        "ACME_API_KEY",
        "eu",
    )
    assert (acme["weight"], acme["max_concurrency"], acme["enabled"]) == (2.0, 4, True)
    assert provider_rows["vault"]["enabled"] is False
    assert provider_rows["vault"]["api_key_env"] is None

    model_rows = await rows(database, Model)
    assert {name: row["id"] for name, row in model_rows.items()} == ids
    big = model_rows["acme/big"]
    assert big["provider_id"] == acme["id"]
    assert (big["upstream_name"], big["backend"], big["context_window"]) == (
        "big",
        "openai",
        128_000,
    )
    assert (big["input_price_per_mtok"], big["output_price_per_mtok"]) == (2.5, 10.0)
    assert big["capabilities"] == ["chat", "vision"]
    assert big["quality"] == {"code": 0.8, "general": 0.9}
    tiny = model_rows["local/tiny"]
    assert (tiny["provider_id"], tiny["backend"], tiny["upstream_name"]) == (
        None,
        "llamacpp",
        "tiny",
    )
    assert tiny["capabilities"] == ["chat", "completions", "json", "tools"]

    # The key itself, from the environment, the file or the headers, is in no row.
    everything = repr(provider_rows) + repr(model_rows)
    assert SECRET not in everything
    assert "Bearer" not in everything


async def test_sync_is_idempotent(database: Database, tmp_path: Path) -> None:
    configs = providers(tmp_path)
    repository = CatalogueRepository(database)
    first = await repository.sync(configs, catalogue_targets(configs))
    before = (await rows(database, Provider), await rows(database, Model))

    again = await repository.sync(configs, catalogue_targets(configs))

    assert again == first
    # Nothing was rewritten: the rows, their update times included, are as they were.
    assert (await rows(database, Provider), await rows(database, Model)) == before


async def test_sync_updates_what_changed(database: Database, tmp_path: Path) -> None:
    configs = providers(tmp_path)
    repository = CatalogueRepository(database)
    first = await repository.sync(configs, catalogue_targets(configs))
    untouched = (await rows(database, Model))["acme/gpt-4o-mini"]

    changed = configs[0].model_copy(
        update={
            "base_url": "http://127.0.0.1:9001/v1",
            "models": [
                "gpt-4o-mini",
                ProviderModelConfig(name="big", input_price_per_mtok=3.0, quality={"general": 1}),
            ],
        }
    )
    ids = await repository.sync([changed, configs[1]], catalogue_targets([changed, configs[1]]))

    assert ids == first
    assert (await rows(database, Provider))["acme"]["base_url"] == "http://127.0.0.1:9001/v1"
    model_rows = await rows(database, Model)
    assert model_rows["acme/big"]["input_price_per_mtok"] == 3.0
    assert model_rows["acme/big"]["quality"] == {"general": 1.0}
    assert model_rows["acme/big"]["context_window"] is None
    assert model_rows["acme/gpt-4o-mini"] == untouched


async def test_sync_refuses_a_target_of_an_unknown_provider(database: Database) -> None:
    stray = upstream_target(
        ProviderConfig(name="ghost", base_url="http://127.0.0.1:1/v1", models=["x"]),
        ProviderModelConfig(name="x"),
    )
    with pytest.raises(CatalogueError, match="ghost"):
        await CatalogueRepository(database).sync([], [stray])
    assert await rows(database, Model) == {}  # one transaction: nothing half-written


async def test_extra_targets_are_the_enabled_rows_not_yet_known(
    database: Database, tmp_path: Path
) -> None:
    configs = providers(tmp_path)
    repository = CatalogueRepository(database)
    targets = catalogue_targets(configs)
    await repository.sync(configs, targets)
    provider_ids = {name: row["id"] for name, row in (await rows(database, Provider)).items()}
    added: dict[str, Any] = {
        "name": "acme/added",
        "provider_id": provider_ids["acme"],
        "upstream_name": "added-2024",
        "backend": "openai",
        "context_window": 8192,
        "input_price_per_mtok": 1.0,
        "output_price_per_mtok": 2.0,
        "capabilities": ["chat", "code"],
        "quality": {"code": 0.7},
        "enabled": True,
    }
    others: list[dict[str, Any]] = [
        {"name": "acme/bare", "provider_id": provider_ids["acme"], "backend": "openai"},
        {"name": "acme/off", "provider_id": provider_ids["acme"], "enabled": False},
        {"name": "vault/added", "provider_id": provider_ids["vault"]},  # provider disabled
        {"name": "local/other", "backend": "llamacpp"},  # local: needs its engine
    ]
    async with database.engine.begin() as conn:
        for row in [added, *others]:
            await conn.execute(insert(Model).values(**{"backend": "openai", **row}))

    extra = await repository.extra_targets({t.id for t in targets})

    assert [t.id for t in extra] == ["acme/added", "acme/bare"]
    target, bare = extra
    assert (target.provider, target.model, target.upstream_model, target.kind) == (
        "acme",
        "added",
        "added-2024",
        "upstream",
    )
    assert target.capabilities == {"chat", "code"}
    assert (target.context_window, target.input_price_per_mtok, target.output_price_per_mtok) == (
        8192,
        1.0,
        2.0,
    )
    assert target.score("code") == 0.7
    assert (target.region, target.weight, target.max_concurrency) == ("eu", 2.0, 4)
    # A row without capabilities gets the default ones; without an upstream name, its own.
    assert bare.capabilities == {"chat", "completions", "tools", "json"}
    assert bare.upstream_model == "bare"
    # The router can serve them.
    catalogue = Catalogue([*targets, *extra])
    assert catalogue.resolve("added").candidates == (target,)

    # Known ids are left out; a provider switched off takes its models with it.
    known = {t.id for t in targets} | {"acme/added"}
    assert [t.id for t in await repository.extra_targets(known)] == ["acme/bare"]
    async with database.engine.begin() as conn:
        await conn.execute(update(Provider).where(Provider.name == "acme").values(enabled=False))
    assert await repository.extra_targets(set()) == []
