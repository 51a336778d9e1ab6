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
    429: {
        "model": ErrorResponse,
        "description": "Queue full, or the upstream is rate limiting; see Retry-After",
    },
    502: {"model": ErrorResponse, "description": "Every target failed; the message names them"},
    503: {"model": ErrorResponse, "description": "No target available (open circuits)"},
    504: {"model": ErrorResponse, "description": "The upstream did not answer in time"},
}


def json_response(model: BaseModel) -> Response:
    """Serialize with pydantic's own encoder (skips FastAPI's re-validation of the reply)."""
    return Response(model.model_dump_json(), media_type="application/json")
