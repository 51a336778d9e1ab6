"""Which conversation a request continues, and fetching its saved KV state before it runs."""

from __future__ import annotations

from fastapi import Request

from helixflow.config import KVCacheConfig
from helixflow.engine.base import Engine, GenerationRequest
from helixflow.engine.kvstore import SessionEngine

MAX_SESSION_ID = 256


def session_id(request: Request, config: KVCacheConfig, user: str | None) -> str | None:
    """The session key: the configured header, else (if allowed) the body's ``user`` field."""
    if not config.enabled:
        return None
    header = request.headers.get(config.session_header, "").strip()
    if header:
        return header[:MAX_SESSION_ID]
    if config.session_from_user and user:
        return user
    return None


async def attach_session(
    request: Request,
    config: KVCacheConfig,
    engine: Engine,
    generation: GenerationRequest,
    user: str | None,
) -> None:
    """Mark ``generation`` as part of a session and attach the state saved after its last turn."""
    key = session_id(request, config, user)
    if key is None or not isinstance(engine, SessionEngine):
        return
    generation.session_id = key
    await engine.attach_session(generation)
