"""POST /v1/chat/completions"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from helixflow.api.deps import get_chat_service, get_settings
from helixflow.api.openai.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from helixflow.api.openai.responses import ERROR_RESPONSES, json_response
from helixflow.api.openai.serving_chat import ChatService
from helixflow.api.openai.sessions import attach_session
from helixflow.api.streaming import sse_response, until_disconnected
from helixflow.api.telemetry import request_record

router = APIRouter()

_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion; with `stream: true`, server-sent events of "
        "`chat.completion.chunk` objects ending with `data: [DONE]`.",
        "content": {"text/event-stream": {"schema": ChatCompletionChunk.model_json_schema()}},
    },
}


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={**_STREAM_DOC, **ERROR_RESPONSES},
    summary="Create a chat completion",
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    service: Annotated[ChatService, Depends(get_chat_service)],
) -> Response:
    record = request_record(request, model=body.model, user=body.user, streamed=body.stream)
    prepared = service.prepare(body)
    settings = get_settings(request)
    await attach_session(
        request, settings.kv_cache, prepared.engine, prepared.generation, body.user
    )
    deltas = service.open(prepared)
    if record is not None:
        record.serving(
            served_model=prepared.engine.info.model_id, prompt_tokens=prepared.prompt_tokens
        )
        deltas = record.watch(deltas)
    if body.stream:
        return sse_response(service.stream(prepared, deltas))
    try:
        return json_response(await until_disconnected(request, service.complete(prepared, deltas)))
    finally:
        deltas.cancel()
