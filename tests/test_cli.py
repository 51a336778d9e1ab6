"""The command line: version, help, models list, argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from helixflow import __version__
from helixflow.cli import app

runner = CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"})


pytestmark = pytest.mark.usefixtures("clean_env")


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"helixflow {__version__}"


def test_serve_help_explains_the_options() -> None:
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--host", "--port", "--config"):
        assert option in result.output


def test_models_list_json_shows_configured_and_bundled(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"models": [{"id": "mine", "bundled": "smollm2-135m", "aliases": ["m"]}]})
    )
    result = runner.invoke(app, ["models", "list", "--json", "--config", str(path)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["id"] == "mine"
    assert rows[0]["aliases"] == ["m"]
    assert rows[0]["configured"]
    bundled = {r["id"]: r for r in rows[1:]}
    assert bundled["gemma3-270m"]["installed"] is True


def test_models_list_table() -> None:
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "smollm2-135m" in result.output


def test_serve_rejects_an_unknown_model() -> None:
    result = runner.invoke(app, ["serve", "--model", "/no/such/model.gguf", "--port", "0"])
    assert result.exit_code != 0
    assert "neither a GGUF file nor a bundled model" in result.output


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "list", "--config", str(tmp_path / "x.yaml")])
    assert result.exit_code != 0
    assert "not found" in result.output


def test_invalid_config_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"models": [{"id": "a"}]}))
    result = runner.invoke(app, ["models", "list", "--config", str(path)])
    assert result.exit_code == 2
    assert "Invalid configuration" in result.output


def test_db_status_upgrade_downgrade_on_the_default_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELIXFLOW_DATA_DIR", str(tmp_path))
    status = runner.invoke(app, ["db", "status", "--json", "--check"])
    assert status.exit_code == 1  # --check: migrations pending
    before = json.loads(status.output)
    assert before["dialect"] == "sqlite"
    assert before["current"] is None
    assert before["pending"][0] == "0001"
    assert before["pending"][-1] == before["head"]

    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"upgraded from base to {before['head']}" in upgraded.output
    assert (tmp_path / "helixflow.db").is_file()
    again = runner.invoke(app, ["db", "upgrade"])
    assert "already at" in again.output

    after = json.loads(runner.invoke(app, ["db", "status", "--json", "--check"]).output)
    assert after["up_to_date"] is True

    down = runner.invoke(app, ["db", "downgrade", "base"])
    assert down.exit_code == 0, down.output
    assert json.loads(runner.invoke(app, ["db", "status", "--json"]).output)["current"] is None


def test_db_commands_take_the_flat_database_url_variable(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELIXFLOW_DATABASE_URL", postgres_url)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    status = json.loads(runner.invoke(app, ["db", "status", "--json"]).output)
    assert status["dialect"] == "postgresql"
    assert status["up_to_date"] is True


def test_db_upgrade_sql_renders_hana_ddl_without_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HELIXFLOW_DATABASE_URL", "hana://user:pw@hana.invalid:30015")
    result = runner.invoke(app, ["db", "upgrade", "--sql"])
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE inference_requests" in result.output
    assert "NVARCHAR" in result.output


def test_db_status_on_an_unreachable_database_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.conftest import free_port

    monkeypatch.setenv("HELIXFLOW_DATABASE_URL", f"postgresql://u@127.0.0.1:{free_port()}/x")
    monkeypatch.setenv("HELIXFLOW_DATABASE__CONNECT_RETRIES", "0")
    result = runner.invoke(app, ["db", "status"])
    assert result.exit_code == 2
    assert "unreachable" in result.output
    assert "Traceback" not in result.output


def test_db_with_an_unsupported_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIXFLOW_DATABASE_URL", "mysql://u@h/db")
    result = runner.invoke(app, ["db", "status"])
    assert result.exit_code == 2
    assert "unsupported database" in result.output


def test_serve_refuses_a_postgresql_schema_that_is_behind(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELIXFLOW_DATABASE_URL", postgres_url)
    result = runner.invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 2
    assert "helixflow db upgrade" in result.output
