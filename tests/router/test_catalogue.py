"""The catalogue built from settings (providers, models, groups, fallbacks), and the routing
settings' own validation (provider names, URLs, API key sources, Redis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from helixflow.config import Settings, load_settings
from helixflow.errors import ModelNotFoundError
from helixflow.router.catalogue import Catalogue, Target
from helixflow.routing_config import GroupConfig, ProviderConfig

pytestmark = pytest.mark.usefixtures("clean_env")


def settings(tmp_path: Path, config: dict[str, Any]) -> Settings:
    """Settings from a YAML file, as a deployment writes them."""
    path = tmp_path / "helixflow.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(path)


def catalogue(tmp_path: Path, config: dict[str, Any]) -> Catalogue:
    return Catalogue.from_settings(settings(tmp_path, config))


LOCAL_MODELS = [
    {"id": "tiny", "bundled": "smollm2-135m", "aliases": ["t"], "parallel": 4},
    {"id": "embed", "bundled": "smollm2-135m", "embedding": True},
]


def ids(targets: tuple[Target, ...] | list[Target]) -> list[str]:
    return [t.id for t in targets]


# --- providers and models --------------------------------------------------------------------


def test_the_documented_provider_shape_serves_its_model(tmp_path: Path) -> None:
    cat = catalogue(
        tmp_path,
        {
            "models": LOCAL_MODELS,
            "providers": [
                {
                    "name": "acme",
                    "base_url": "http://127.0.0.1:9000/v1",
                    "api_key_env": "ACME_API_KEY",
                    "models": ["gpt-4o-mini"],
                }
            ],
        },
    )
    assert set(cat.targets) == {"local/tiny", "local/embed", "acme/gpt-4o-mini"}
    target = cat.targets["acme/gpt-4o-mini"]
    assert (target.model, target.provider, target.upstream_model) == (
        "gpt-4o-mini",
        "acme",
        "gpt-4o-mini",
    )
    assert target.kind == "upstream"
    assert not target.local
    assert target.capabilities == frozenset({"chat", "completions", "tools", "json"})
    for name in ("gpt-4o-mini", "acme/gpt-4o-mini"):
        selection = cat.resolve(name)
        assert ids(selection.candidates) == ["acme/gpt-4o-mini"]
        assert not selection.choosing
    assert ids(cat.upstream()) == ["acme/gpt-4o-mini"]


def test_local_models_are_targets_with_their_aliases(tmp_path: Path) -> None:
    cat = catalogue(tmp_path, {"models": LOCAL_MODELS})
    tiny = cat.targets["local/tiny"]
    assert tiny.local
    assert tiny.max_concurrency == 4  # parallel, when max_concurrency is not set
    assert ids(cat.resolve("t").candidates) == ["local/tiny"]
    assert ids(cat.resolve("local/tiny").candidates) == ["local/tiny"]
    assert cat.targets["local/embed"].capabilities == frozenset({"embeddings"})


def test_model_objects_carry_their_traits(tmp_path: Path) -> None:
    cat = catalogue(
        tmp_path,
        {
            "models": LOCAL_MODELS,
            "providers": [
                {
                    "name": "acme",
                    "base_url": "https://api.acme.test/v1/",
                    "region": "eu",
                    "weight": 2.0,
                    "max_concurrency": 64,
                    "models": [
                        "plain",
                        {
                            "name": "big",
                            "aliases": ["large"],
                            "context_window": 128000,
                            "input_price_per_mtok": 2.5,
                            "output_price_per_mtok": 10.0,
                            "capabilities": ["chat", "vision"],
                            "quality": {"general": 0.9, "code": 0.8},
                            "region": "us",
                            "weight": 1.5,
                            "max_concurrency": 8,
                        },
                    ],
                }
            ],
        },
    )
    plain, big = cat.targets["acme/plain"], cat.targets["acme/big"]
    assert plain.region == "eu"  # the provider's
    assert big.region == "us"  # the model's own wins
    assert plain.weight == 2.0
    assert big.weight == 3.0  # model weight x provider weight
    assert plain.max_concurrency == 64
    assert big.max_concurrency == 8
    assert big.context_window == 128000
    assert big.capabilities == frozenset({"chat", "vision"})
    assert big.supports("vision")
    assert not big.supports("tools")
    assert ids(cat.resolve("large").candidates) == ["acme/big"]


def test_a_disabled_provider_adds_no_targets(tmp_path: Path) -> None:
    cat = catalogue(
        tmp_path,
        {
            "models": LOCAL_MODELS,
            "providers": [
                {"name": "off", "base_url": "http://h/v1", "models": ["m"], "enabled": False}
            ],
        },
    )
    assert "off/m" not in cat.targets
    with pytest.raises(ModelNotFoundError):
        cat.resolve("m")


def test_a_model_served_by_two_providers_resolves_to_both(tmp_path: Path) -> None:
    cat = catalogue(
        tmp_path,
        {
            "models": LOCAL_MODELS,
            "providers": [
                {"name": "acme", "base_url": "http://a/v1", "models": ["gpt-4o-mini"]},
                {"name": "backup", "base_url": "http://b/v1", "models": ["gpt-4o-mini"]},
            ],
            "router": {"default_strategy": "round_robin"},
        },
    )
    selection = cat.resolve("gpt-4o-mini")
    assert ids(selection.candidates) == ["acme/gpt-4o-mini", "backup/gpt-4o-mini"]
    assert selection.choosing
    assert selection.group is None
    assert selection.strategy == "round_robin"
    assert selection.affinity == "session"
    direct = cat.resolve("backup/gpt-4o-mini")
    assert ids(direct.candidates) == ["backup/gpt-4o-mini"]
    assert not direct.choosing


def test_an_unknown_name_is_model_not_found(tmp_path: Path) -> None:
    cat = catalogue(tmp_path, {"models": LOCAL_MODELS})
    with pytest.raises(ModelNotFoundError, match="nope"):
        cat.resolve("nope")
    assert cat.target("nope/x") is None


def test_extra_targets_from_the_database_do_not_replace_configured_ones(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        {
            "models": LOCAL_MODELS,
            "providers": [{"name": "acme", "base_url": "http://a/v1", "models": ["m"]}],
        },
    )
    configured = Catalogue.from_settings(s).targets["acme/m"]
    duplicate = Target(
        id="acme/m",
        model="m",
        provider="acme",
        upstream_model="m",
        kind="upstream",
        capabilities=frozenset({"embeddings"}),
    )
    added = Target(
        id="db/x",
        model="x",
        provider="db",
        upstream_model="x",
        kind="upstream",
        capabilities=frozenset({"chat"}),
    )
    cat = Catalogue.from_settings(s, extra=[duplicate, added])
    assert cat.targets["acme/m"] == configured
    assert ids(cat.resolve("x").candidates) == ["db/x"]


def test_a_target_defined_twice_is_refused() -> None:
    t = Target(
        id="a/m", model="m", provider="a", upstream_model="m", kind="upstream",
        capabilities=frozenset({"chat"}),
    )  # fmt: skip
    with pytest.raises(ValueError, match="defined twice"):
        Catalogue([t, t])


# --- fallbacks -------------------------------------------------------------------------------


def test_fallbacks_follow_the_candidates_in_order_without_repeats(tmp_path: Path) -> None:
    cat = catalogue(
        tmp_path,
        {
            "models": LOCAL_MODELS,
            "providers": [
                {
                    "name": "acme",
                    "base_url": "http://a/v1",
                    "models": [{"name": "main", "fallbacks": ["backup/spare", "tiny", "main"]}],
                },
                {"name": "backup", "base_url": "http://b/v1", "models": ["spare", "main"]},
            ],
        },
    )
    selection = cat.resolve("acme/main")
    assert ids(selection.candidates) == ["acme/main"]
    # "main" names acme/main (a candidate already) and backup/main
    assert ids(selection.fallbacks) == ["backup/spare", "local/tiny", "backup/main"]


def test_a_fallback_naming_an_unknown_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="falls back to 'ghost'"):
        catalogue(
            tmp_path,
            {
                "models": LOCAL_MODELS,
                "providers": [
                    {
                        "name": "acme",
                        "base_url": "http://a/v1",
                        "models": [{"name": "main", "fallbacks": ["ghost"]}],
                    }
                ],
            },
        )


# --- groups ----------------------------------------------------------------------------------


PROVIDERS = [
    {"name": "acme", "base_url": "http://a/v1", "models": ["gpt-4o-mini", "gpt-4o"]},
    {"name": "backup", "base_url": "http://b/v1", "models": ["gpt-4o-mini", "llama"]},
]


def test_the_default_auto_group_spans_every_generation_model(tmp_path: Path) -> None:
    cat = catalogue(tmp_path, {"models": LOCAL_MODELS, "providers": PROVIDERS})
    selection = cat.resolve("auto")
    assert ids(selection.candidates) == [
        "local/tiny",
        "acme/gpt-4o-mini",
        "acme/gpt-4o",
        "backup/gpt-4o-mini",
        "backup/llama",
    ]  # no embedding model
    assert selection.group == "auto"
    assert selection.choosing
    assert selection.fallbacks == ()
    assert selection.strategy == "weighted"


def test_groups_with_names_patterns_and_options(tmp_path: Path) -> None:
    cat = catalogue(
        tmp_path,
        {
            "models": LOCAL_MODELS,
            "providers": PROVIDERS,
            "router": {
                "groups": [
                    {"name": "acme-all", "targets": ["acme/*"], "strategy": "round_robin"},
                    {
                        "name": "minis",
                        "targets": ["gpt-4o-mini", "backup/llama", "t", "acme/gpt-4o-mini"],
                        "strategy": "cost",
                        "options": {"quality_floor": 0.5},
                        "affinity": "prefix",
                    },
                    {"name": "every", "targets": ["*", "local/*"]},
                    {"name": "solo", "targets": ["acme/gpt-4o"]},
                ]
            },
        },
    )
    assert ids(cat.resolve("acme-all").candidates) == ["acme/gpt-4o-mini", "acme/gpt-4o"]
    minis = cat.resolve("minis")
    # a model name brings every provider's target; duplicates are kept once
    assert ids(minis.candidates) == [
        "acme/gpt-4o-mini",
        "backup/gpt-4o-mini",
        "backup/llama",
        "local/tiny",
    ]
    assert (minis.strategy, dict(minis.options), minis.affinity) == (
        "cost",
        {"quality_floor": 0.5},
        "prefix",
    )
    # `*` leaves embedding models out, a pattern naming them brings them in
    assert "local/embed" in ids(cat.resolve("every").candidates)
    solo = cat.resolve("solo")
    assert ids(solo.candidates) == ["acme/gpt-4o"]
    assert solo.choosing  # a group lets the router choose even among one
    assert set(cat.groups) == {"acme-all", "minis", "every", "solo"}
    group = cat.group("minis")
    assert group is not None
    assert group.strategy == "cost"
    assert cat.group("auto") is None  # replaced by the configured list


@pytest.mark.parametrize("member", ["ghost", "nobody/*", "acme/gpt-5?"])
def test_a_group_member_matching_nothing_is_refused(tmp_path: Path, member: str) -> None:
    with pytest.raises(ValueError, match="matches no model"):
        catalogue(
            tmp_path,
            {
                "models": LOCAL_MODELS,
                "providers": PROVIDERS,
                "router": {"groups": [{"name": "g", "targets": ["acme/*", member]}]},
            },
        )


@pytest.mark.parametrize("name", ["gpt-4o", "t", "tiny"])
def test_a_group_named_like_a_model_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="has the name of a model"):
        catalogue(
            tmp_path,
            {
                "models": LOCAL_MODELS,
                "providers": PROVIDERS,
                "router": {"groups": [{"name": name, "targets": ["*"]}]},
            },
        )


def test_a_group_named_like_a_target_id_is_refused() -> None:
    t = Target(
        id="acme/m", model="m", provider="acme", upstream_model="m", kind="upstream",
        capabilities=frozenset({"chat"}),
    )  # fmt: skip
    with pytest.raises(ValueError, match="has the name of a model"):
        Catalogue([t], [GroupConfig.model_construct(name="acme/m", targets=["*"])])


# --- target arithmetic -----------------------------------------------------------------------


def test_cost_is_dollars_per_request() -> None:
    t = Target(
        id="a/m", model="m", provider="a", upstream_model="m", kind="upstream",
        capabilities=frozenset({"chat"}), input_price_per_mtok=2.5, output_price_per_mtok=10.0,
    )  # fmt: skip
    assert t.cost(0, 0) == 0.0
    assert t.cost(1_000_000, 0) == pytest.approx(2.5)
    assert t.cost(2000, 500) == pytest.approx((2000 * 2.5 + 500 * 10.0) / 1e6)


def test_score_falls_back_to_general_then_one_half() -> None:
    def with_quality(quality: dict[str, float]) -> Target:
        return Target(
            id="a/m", model="m", provider="a", upstream_model="m", kind="upstream",
            capabilities=frozenset({"chat"}), quality=quality,
        )  # fmt: skip

    t = with_quality({"general": 0.7, "code": 0.9})
    assert t.score("code") == 0.9
    assert t.score("math") == 0.7
    assert t.score() == 0.7
    assert with_quality({"code": 0.9}).score("math") == 0.5
    assert with_quality({}).score() == 0.5


# --- settings validation ---------------------------------------------------------------------


def test_duplicate_provider_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'acme' is reserved or used twice"):
        settings(
            tmp_path,
            {
                "providers": [
                    {"name": "acme", "base_url": "http://a/v1", "models": ["m"]},
                    {"name": "acme", "base_url": "http://b/v1", "models": ["n"]},
                ]
            },
        )


def test_a_provider_named_local_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'local' is reserved"):
        settings(
            tmp_path, {"providers": [{"name": "local", "base_url": "http://a/v1", "models": ["m"]}]}
        )


@pytest.mark.parametrize("url", ["127.0.0.1:9000/v1", "ftp://h/v1", "api.acme.test"])
def test_a_base_url_without_http_scheme_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="must start with http"):
        ProviderConfig(name="acme", base_url=url, models=["m"])


def test_a_base_url_loses_its_trailing_slash() -> None:
    assert (
        ProviderConfig(name="a", base_url="https://h/v1/", models=["m"]).base_url == "https://h/v1"
    )


def test_api_key_env_and_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        ProviderConfig(
            name="acme",
            base_url="http://a/v1",
            models=["m"],
            api_key_env="ACME_KEY",
            api_key_file=tmp_path / "key",
        )


def test_a_provider_needs_a_model() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ProviderConfig(name="acme", base_url="http://a/v1", models=[])


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = ProviderConfig(
        name="acme", base_url="http://a/v1", models=["m"], api_key_env="ACME_TEST_KEY"
    )
    monkeypatch.setenv("ACME_TEST_KEY", "  sk-from-env\n")
    assert provider.api_key() == "sk-from-env"
    monkeypatch.delenv("ACME_TEST_KEY")
    with pytest.raises(ValueError, match="ACME_TEST_KEY is not set"):
        provider.api_key()
    monkeypatch.setenv("ACME_TEST_KEY", "   ")
    with pytest.raises(ValueError, match="ACME_TEST_KEY"):
        provider.api_key()


def test_api_key_from_a_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "acme.key"
    provider = ProviderConfig(name="acme", base_url="http://a/v1", models=["m"], api_key_file=path)
    with pytest.raises(ValueError, match="cannot read api_key_file"):
        provider.api_key()
    path.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        provider.api_key()
    path.write_text("sk-from-file\n")
    assert provider.api_key() == "sk-from-file"


def test_no_key_source_means_no_key() -> None:
    assert ProviderConfig(name="acme", base_url="http://a/v1", models=["m"]).api_key() is None


def test_the_api_key_is_not_part_of_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_TEST_KEY", "sk-secret-value")
    s = settings(
        tmp_path,
        {
            "providers": [
                {
                    "name": "acme",
                    "base_url": "http://a/v1",
                    "api_key_env": "ACME_TEST_KEY",
                    "models": ["m"],
                }
            ]
        },
    )
    assert "sk-secret-value" not in s.model_dump_json()
    assert s.providers[0].api_key() == "sk-secret-value"


def test_redis_url_from_the_flat_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().redis.url is None
    monkeypatch.setenv("HELIXFLOW_REDIS_URL", "redis://cache.internal:6379/2")
    assert load_settings().redis.url == "redis://cache.internal:6379/2"
    s = settings(tmp_path, {"redis": {"url": "redis://file:6379/0"}})
    assert s.redis.url == "redis://cache.internal:6379/2"  # the environment wins over the file
