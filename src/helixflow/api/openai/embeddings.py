"""POST /v1/embeddings"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from helixflow.api.deps import get_embedding_service
from helixflow.api.openai.protocol_embeddings import EmbeddingList, EmbeddingRequest
from helixflow.api.openai.responses import ERROR_RESPONSES
from helixflow.api.openai.serving_embeddings import EmbeddingService
from helixflow.api.streaming import until_disconnected
from helixflow.api.telemetry import request_record

router = APIRouter()


@router.post(
    "/embeddings",
    response_model=EmbeddingList,
    responses=ERROR_RESPONSES,
    summary="Create embeddings",
)
async def create_embeddings(
    body: EmbeddingRequest,
    request: Request,
    service: Annotated[EmbeddingService, Depends(get_embedding_service)],
) -> Response:
    record = request_record(request, model=body.model, user=body.user, streamed=False)
    prepared = service.prepare(body)
    if record is not None:
        record.serving(
            served_model=prepared.embedder.info.model_id, prompt_tokens=prepared.prompt_tokens
        )
    content = await until_disconnected(request, service.embed(prepared))
    return Response(content, media_type="application/json")
