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
