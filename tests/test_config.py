"""Settings: defaults, YAML file, environment, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helixflow.config import DEFAULT_MODEL_ID, ConfigFileError, ModelConfig, load_settings

pytestmark = pytest.mark.usefixtures("clean_env")


def test_defaults_serve_the_bundled_model_on_localhost() -> None:
    settings = load_settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert [m.id for m in settings.models] == [DEFAULT_MODEL_ID]
    assert settings.models[0].bundled == DEFAULT_MODEL_ID


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "helixflow.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"port": 9001},
                "models": [
                    {
                        "id": "tiny",
                        "bundled": "smollm2-135m",
                        "aliases": ["t"],
                        "context_size": 4096,
                        "parallel": 2,
                        "chat_template": "{{ x }}",
                    }
                ],
            }
        )
    )
    settings = load_settings(path)
    assert settings.server.port == 9001
    model = settings.models[0]
    assert (model.id, model.aliases, model.context_size, model.parallel) == ("tiny", ["t"], 4096, 2)
    assert model.names == ["tiny", "t"]


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "helixflow.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": 9001, "host": "0.0.0.0"}}))
    monkeypatch.setenv("HELIXFLOW_SERVER__PORT", "9002")
    settings = load_settings(path)
    assert settings.server.port == 9002
    assert settings.server.host == "0.0.0.0"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": 9100}}))
    monkeypatch.setenv("HELIXFLOW_CONFIG", str(path))
    assert load_settings().server.port == 9100


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"id": "a"}, "exactly one of"),
        ({"id": "a", "bundled": "x", "path": "/x.gguf"}, "exactly one of"),
        ({"id": "a", "bundled": "x", "parallel": 0}, "greater than or equal"),
        ({"id": "a", "bundled": "x", "context_size": 256, "parallel": 8}, "64 tokens"),
        ({"id": "", "bundled": "x"}, "at least 1"),
    ],
)
def test_invalid_models_are_rejected(model: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.model_validate(model)


def test_duplicate_names_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"id": "a", "bundled": "smollm2-135m"},
                    {"id": "b", "bundled": "smollm2-135m", "aliases": ["a"]},
                ]
            }
        )
    )
    with pytest.raises(ValueError, match="used twice"):
        load_settings(path)


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"sever": {"port": 1}}))
    with pytest.raises(ValueError, match="sever"):
        load_settings(path)


def test_database_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'helixflow.db'}"
    assert settings.spool_dir == tmp_path / "spool"


def test_database_url_from_the_flat_variable_beats_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": "postgresql://file@h/db", "pool_size": 7}}))
    assert load_settings(path).database_url == "postgresql://file@h/db"
    monkeypatch.setenv("HELIXFLOW_DATABASE_URL", "postgresql://env@h/db")
    settings = load_settings(path)
    assert settings.database_url == "postgresql://env@h/db"
    assert settings.database.pool_size == 7  # the rest of the section still comes from the file
    monkeypatch.setenv("HELIXFLOW_DATABASE__URL", "postgresql://nested@h/db")
    assert load_settings(path).database_url == "postgresql://nested@h/db"


@pytest.mark.parametrize(
    "section",
    [
        {"database": {"pool_size": 0}},
        {"database": {"auto_upgrade": "sometimes"}},
        {"telemetry": {"spool_fsync": "maybe"}},
        {"telemetry": {"batch_size": 0}},
    ],
)
def test_invalid_database_and_telemetry_settings(
    tmp_path: Path, section: dict[str, object]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(section))
    with pytest.raises(ValueError, match="validation error"):
        load_settings(path)
