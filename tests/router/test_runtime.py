"""The router's run time: preflight checks before binding, active probes, and serve's refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from helixflow.cli import app
from helixflow.config import Settings
from helixflow.errors import ConfigurationError
from helixflow.router.runtime import RouterRuntime, preflight
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.usefixtures("clean_env")

LOCAL = [{"id": "smollm2-135m", "bundled": "smollm2-135m"}]


def settings(**sections: Any) -> Settings:
    return Settings.model_validate({"models": LOCAL, **sections})


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream("acme") as upstream:
        yield upstream


def test_preflight_accepts_a_sound_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_KEY", "sk-1")
    preflight(
        settings(
            providers=[
                {
                    "name": "acme",
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key_env": "ACME_KEY",
                    "models": ["m"],
                }
            ],
            router={"groups": [{"name": "fast", "targets": ["acme/*"], "strategy": "cost"}]},
        )
    )


@pytest.mark.parametrize(
    ("sections", "mentions"),
    [
        (
            {
                "providers": [
                    {
                        "name": "acme",
                        "base_url": "http://h/v1",
                        "api_key_env": "NOT_SET_ANYWHERE",
                        "models": ["m"],
                    }
                ]
            },
            "NOT_SET_ANYWHERE",
        ),
        ({"router": {"groups": [{"name": "g", "strategy": "fastest"}]}}, "fastest"),
        ({"router": {"groups": [{"name": "g", "targets": ["nope"]}]}}, "nope"),
        (
            {"router": {"groups": [{"name": "g", "strategy": "cost", "options": {"x": 1}}]}},
            "router group 'g'",
        ),
        ({"router": {"groups": [{"name": "smollm2-135m"}]}}, "name of a model"),
        ({"router": {"default_strategy": "nope"}}, "default_strategy"),
    ],
)
def test_preflight_names_what_to_fix(sections: dict[str, Any], mentions: str) -> None:
    with pytest.raises(ConfigurationError, match=mentions):
        preflight(settings(**sections))


def test_serve_refuses_to_start_without_a_provider_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": LOCAL,
                "data_dir": str(tmp_path),
                "providers": [
                    {
                        "name": "acme",
                        "base_url": "http://h/v1",
                        "api_key_env": "ACME_MISSING_KEY",
                        "models": ["m"],
                    }
                ],
            }
        )
    )
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "ACME_MISSING_KEY" in result.output


async def test_probes_mark_a_provider_down_and_up(fake: FakeUpstream) -> None:
    config = settings(
        providers=[{"name": "acme", "base_url": fake.base_url, "models": ["m1", "m2"]}],
        router={"breaker": {"failure_threshold": 1}, "probe_interval_s": 3600},
    )
    runtime = await RouterRuntime.open(config, None, lambda model: (2048, 0))
    try:
        health = runtime.router.health
        await runtime.probe_once()
        assert fake.count("/v1/models") == 1
        assert health["acme/m1"].probe_ok is True
        assert health["acme/m2"].probe_ok is True
        fake.down()
        await runtime.probe_once()
        for target in ("acme/m1", "acme/m2"):
            assert health[target].probe_ok is False
            assert health[target].breaker.state == "open"
            assert "could not be reached" in (health[target].last_error or "")
        fake.up()
        await runtime.probe_once()
        assert health["acme/m1"].breaker.state == "half_open"  # a request may try it now
        assert runtime.router.catalogue.target("local/smollm2-135m") is not None
        assert runtime.router.catalogue.targets["local/smollm2-135m"].context_window == 2048
    finally:
        await runtime.close()
