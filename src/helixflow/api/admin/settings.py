"""GET /api/v1/settings: the effective configuration, secrets masked (admins only).

What the process runs with, after defaults, the YAML file, the environment and the command
line: the dashboard's Settings view. Values that are secrets (passwords and keys inside URLs,
header values of providers, anything whose name says secret, password, token or key but is
not the *name* of where a secret is kept) are replaced by ``"***"``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from helixflow.api.auth import require
from helixflow.api.deps import get_settings
from helixflow.config import Settings
from helixflow.store.urls import redact

router = APIRouter(prefix="/api/v1", tags=["settings"])

MASK = "***"
_SECRET_NAME = re.compile(r"(password|secret|token|api_?key|credential)", re.IGNORECASE)
_WHERE_A_SECRET_IS = re.compile(r"(_env|_file|_path|_ttl_s|_length)$")
"""Names of settings that say where a secret is, or how it behaves: shown as they are."""
_URL_WITH_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)


class EffectiveSettings(BaseModel):
    object: str = "settings"
    settings: dict[str, Any] = Field(description="The settings tree, secrets masked.")


def masked(value: Any, name: str = "") -> Any:
    """``value`` with every secret in it replaced by ``***``."""
    if isinstance(value, dict):
        if name == "headers":  # providers' extra headers often carry credentials
            return {key: MASK for key in value}
        return {key: masked(item, str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [masked(item, name) for item in value]
    if isinstance(value, str):
        if _URL_WITH_CREDENTIALS.match(value):
            return redact(value)
        if _SECRET_NAME.search(name) and not _WHERE_A_SECRET_IS.search(name):
            return MASK
    return value


@router.get(
    "/settings",
    response_model=EffectiveSettings,
    summary="The effective configuration, secrets masked",
    dependencies=[Depends(require("admin"))],
)
async def effective_settings(
    settings: Annotated[Settings, Depends(get_settings)],
) -> EffectiveSettings:
    return EffectiveSettings(settings=masked(settings.model_dump(mode="json")))
