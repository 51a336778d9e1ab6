"""GET /api/v1/settings: the effective configuration with every secret masked."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from helixflow.api.admin.settings import MASK, masked
from helixflow.api.admin.settings import router as settings_router
from helixflow.api.errors import install_error_handlers
from helixflow.config import Settings
from tests.api.admin.harness import asgi_client

SECRET = "hunter2-very-secret"


def settings_with_secrets() -> Settings:
    return Settings.model_validate(
        {
            "database": {"url": f"postgresql://helix:{SECRET}@db:5432/helix"},
            "redis": {"url": f"redis://default:{SECRET}@cache:6379/0"},
            "providers": [
                {
                    "name": "acme",
                    "base_url": "https://api.example.com/v1",
                    "api_key_env": "ACME_API_KEY",
                    "headers": {"X-Api-Token": SECRET},
                    "models": ["m"],
                }
            ],
            "kv_cache": {"s3": {"bucket": "kv-bucket", "access_key_id_env": "AWS_KEY"}},
        }
    )


def test_masked_hides_secrets_and_keeps_where_they_live() -> None:
    out = masked(settings_with_secrets().model_dump(mode="json"))
    text = str(out)
    assert SECRET not in text
    assert out["database"]["url"] == "postgresql://helix:***@db:5432/helix"
    assert out["providers"][0]["headers"] == {"X-Api-Token": MASK}
    assert out["providers"][0]["api_key_env"] == "ACME_API_KEY"  # the variable's name
    assert out["kv_cache"]["s3"]["access_key_id_env"] == "AWS_KEY"
    assert out["security"]["secret_env"] == "HELIXFLOW_SECRET"
    assert out["security"]["access_token_ttl_s"] == 900


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("password", "pw", MASK),
        ("client_secret", "x", MASK),
        ("api_key", "sk-1", MASK),
        ("password_file", "/run/secrets/pw", "/run/secrets/pw"),
        ("model", "gpt", "gpt"),
        ("url", "https://user:pw@host/x", "https://user:***@host/x"),
    ],
)
def test_masked_values(name: str, value: Any, expected: Any) -> None:
    assert masked({name: value}) == {name: expected}


async def test_the_endpoint_answers_admins_with_the_masked_tree() -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.state.settings = settings_with_secrets()
    app.include_router(settings_router)
    async with asgi_client(app) as client:
        response = await client.get("/api/v1/settings")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "settings"
    assert SECRET not in response.text
    assert body["settings"]["router"]["retry"]["attempts"] == 2
