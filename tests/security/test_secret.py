"""The server secret: environment, file, or a generated 0600 file in the data directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from helixflow.config import Settings
from helixflow.errors import ConfigurationError
from helixflow.security.secret import derive, load_secret

pytestmark = pytest.mark.usefixtures("clean_env")


def settings(tmp_path: Path, **security: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", security=security)


def test_generated_once_private_and_stable(tmp_path: Path) -> None:
    config = settings(tmp_path)
    first = load_secret(config, environ={})
    path = tmp_path / "data" / "secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert load_secret(config, environ={}) == first  # read back, not regenerated
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary left behind


def test_two_data_directories_get_different_secrets(tmp_path: Path) -> None:
    a = load_secret(settings(tmp_path / "a"), environ={})
    b = load_secret(settings(tmp_path / "b"), environ={})
    assert a != b


def test_a_readable_secret_file_is_refused_with_the_chmod_to_run(tmp_path: Path) -> None:
    config = settings(tmp_path)
    load_secret(config, environ={})
    path = tmp_path / "data" / "secret"
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError, match=r"chmod 600 .*secret"):
        load_secret(config, environ={})


def test_the_environment_variable_wins(tmp_path: Path) -> None:
    config = settings(tmp_path, secret_env="MY_SECRET")
    value = "0123456789abcdef0123456789abcdef"
    assert load_secret(config, environ={"MY_SECRET": f" {value}\n"}) == value.encode()
    assert not (tmp_path / "data" / "secret").exists()


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    config = settings(tmp_path, secret_env="MY_SECRET")
    with pytest.raises(ConfigurationError, match="at least 16"):
        load_secret(config, environ={"MY_SECRET": "short"})


def test_the_configured_file(tmp_path: Path) -> None:
    path = tmp_path / "mounted"
    path.write_text("a-secret-from-the-orchestrator-0123456789\n")
    config = settings(tmp_path, secret_file=path)
    assert load_secret(config, environ={}) == b"a-secret-from-the-orchestrator-0123456789"
    assert not (tmp_path / "data" / "secret").exists()


def test_a_missing_configured_file_is_a_configuration_error(tmp_path: Path) -> None:
    config = settings(tmp_path, secret_file=tmp_path / "absent")
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_secret(config, environ={})


def test_an_empty_environment_variable_falls_through_to_the_file(tmp_path: Path) -> None:
    config = settings(tmp_path)
    assert load_secret(config, environ={"HELIXFLOW_SECRET": ""}) == load_secret(config, environ={})
    assert (tmp_path / "data" / "secret").exists()


def test_derived_keys_differ_per_purpose_and_are_stable() -> None:
    secret = b"x" * 32
    assert derive(secret, "api-key-hash") == derive(secret, "api-key-hash")
    assert derive(secret, "api-key-hash") != derive(secret, "signing-key-encryption")
    assert derive(secret, "api-key-hash") != derive(b"y" * 32, "api-key-hash")
    assert len(derive(secret, "api-key-hash")) == 32
    with pytest.raises(ValueError, match="purpose"):
        derive(secret, "")
