"""Shared response helpers and the documented error responses."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel

from helixflow.api.openai.protocol import ErrorResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    429: {"model": ErrorResponse, "description": "Queue full; see Retry-After"},
}


def json_response(model: BaseModel) -> Response:
    """Serialize with pydantic's own encoder (skips FastAPI's re-validation of the reply)."""
    return Response(model.model_dump_json(), media_type="application/json")
