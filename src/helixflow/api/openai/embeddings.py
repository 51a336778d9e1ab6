"""POST /v1/embeddings"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from helixflow.api.auth import require
from helixflow.api.deps import get_embedding_service, get_gateway
from helixflow.api.openai.gateway import Call, Gateway, raw_body, record_of
from helixflow.api.openai.needs import embedding_needs
from helixflow.api.openai.protocol_embeddings import EmbeddingList, EmbeddingRequest
from helixflow.api.openai.responses import ERROR_RESPONSES
from helixflow.api.openai.results import JsonResult, Result
from helixflow.api.openai.serving_embeddings import EmbeddingService
from helixflow.api.telemetry import request_record
from helixflow.router.catalogue import Target

router = APIRouter()


@router.post(
    "/embeddings",
    response_model=EmbeddingList,
    responses=ERROR_RESPONSES,
    summary="Create embeddings",
    dependencies=[Depends(require("developer"))],
)
async def create_embeddings(
    body: EmbeddingRequest,
    request: Request,
    service: Annotated[EmbeddingService, Depends(get_embedding_service)],
    gateway: Annotated[Gateway, Depends(get_gateway)],
) -> Response:
    request_record(request, model=body.model, user=body.user, streamed=False)

    async def local(target: Target, renamed: bool) -> Result:
        asked = body.model_copy(update={"model": target.model}) if renamed else body
        prepared = service.prepare(asked)
        record_of(request).serving(
            served_model=prepared.embedder.info.model_id, prompt_tokens=prepared.prompt_tokens
        )
        return JsonResult(await service.embed(prepared))

    call = Call(
        endpoint="embeddings",
        path="embeddings",
        model=body.model,
        raw=await raw_body(request),
        needs=embedding_needs(body, request),
    )
    return await gateway.serve(request, call, local)
