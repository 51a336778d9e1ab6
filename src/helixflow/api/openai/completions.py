"""POST /v1/completions (legacy)"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from helixflow.api.deps import get_completion_service
from helixflow.api.openai.protocol import Completion, CompletionRequest
from helixflow.api.openai.responses import ERROR_RESPONSES, json_response
from helixflow.api.openai.serving_completions import CompletionService
from helixflow.api.streaming import sse_response, until_disconnected
from helixflow.api.telemetry import request_record

router = APIRouter()


@router.post(
    "/completions",
    response_model=Completion,
    responses={
        200: {
            "description": "The completion; with `stream: true`, server-sent events of "
            "`text_completion` objects ending with `data: [DONE]`."
        },
        **ERROR_RESPONSES,
    },
    summary="Create a text completion (legacy)",
)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    service: Annotated[CompletionService, Depends(get_completion_service)],
) -> Response:
    record = request_record(request, model=body.model, user=body.user, streamed=body.stream)
    prepared = service.prepare(body)
    opened = service.open(prepared)
    if record is not None:
        record.serving(
            served_model=prepared.engine.info.model_id, prompt_tokens=prepared.prompt_tokens
        )
        opened = [record.watch(stream) for stream in opened]
    if body.stream:
        return sse_response(service.stream(prepared, opened))
    try:
        return json_response(await until_disconnected(request, service.complete(prepared, opened)))
    finally:
        for stream in opened:
            stream.cancel()
