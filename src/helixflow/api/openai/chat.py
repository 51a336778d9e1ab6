"""POST /v1/chat/completions"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from helixflow.api.auth import require
from helixflow.api.deps import get_chat_service, get_gateway, get_settings
from helixflow.api.openai.gateway import Call, Gateway, raw_body, record_of
from helixflow.api.openai.needs import chat_needs
from helixflow.api.openai.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from helixflow.api.openai.responses import ERROR_RESPONSES
from helixflow.api.openai.results import JsonResult, Result, StreamResult
from helixflow.api.openai.serving_chat import ChatService
from helixflow.api.openai.sessions import attach_session
from helixflow.api.telemetry import request_record
from helixflow.router.catalogue import Target

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
    dependencies=[Depends(require("developer"))],
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    service: Annotated[ChatService, Depends(get_chat_service)],
    gateway: Annotated[Gateway, Depends(get_gateway)],
) -> Response:
    request_record(request, model=body.model, user=body.user, streamed=body.stream)
    settings = get_settings(request)

    async def local(target: Target, renamed: bool) -> Result:
        asked = body.model_copy(update={"model": target.model}) if renamed else body
        prepared = service.prepare(asked)
        await attach_session(
            request, settings.kv_cache, prepared.engine, prepared.generation, body.user
        )
        deltas = service.open(prepared)
        record = record_of(request)
        record.serving(
            served_model=prepared.engine.info.model_id, prompt_tokens=prepared.prompt_tokens
        )
        deltas = record.watch(deltas)
        if body.stream:
            return StreamResult(service.stream(prepared, deltas))
        try:
            completion = await service.complete(prepared, deltas)
        finally:
            deltas.cancel()
        return JsonResult(completion.model_dump_json().encode())

    call = Call(
        endpoint="chat.completions",
        path="chat/completions",
        model=body.model,
        raw=await raw_body(request),
        needs=chat_needs(body, request, settings),
        stream=body.stream,
        include_usage=body.include_usage,
    )
    return await gateway.serve(request, call, local)
