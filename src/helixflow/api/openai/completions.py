"""POST /v1/completions (legacy)"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from helixflow.api.auth import require
from helixflow.api.deps import get_completion_service, get_gateway, get_settings
from helixflow.api.openai.gateway import Call, Gateway, raw_body, record_of
from helixflow.api.openai.needs import completion_needs
from helixflow.api.openai.protocol import Completion, CompletionRequest
from helixflow.api.openai.responses import ERROR_RESPONSES
from helixflow.api.openai.results import JsonResult, Result, StreamResult
from helixflow.api.openai.serving_completions import CompletionService
from helixflow.api.telemetry import request_record
from helixflow.router.catalogue import Target

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
    dependencies=[Depends(require("developer"))],
)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    service: Annotated[CompletionService, Depends(get_completion_service)],
    gateway: Annotated[Gateway, Depends(get_gateway)],
) -> Response:
    request_record(request, model=body.model, user=body.user, streamed=body.stream)

    async def local(target: Target, renamed: bool) -> Result:
        asked = body.model_copy(update={"model": target.model}) if renamed else body
        prepared = service.prepare(asked)
        opened = service.open(prepared)
        record = record_of(request)
        record.serving(
            served_model=prepared.engine.info.model_id, prompt_tokens=prepared.prompt_tokens
        )
        opened = [record.watch(stream) for stream in opened]
        if body.stream:
            return StreamResult(service.stream(prepared, opened))
        try:
            completion = await service.complete(prepared, opened)
        finally:
            for stream in opened:
                stream.cancel()
        return JsonResult(completion.model_dump_json().encode())

    call = Call(
        endpoint="completions",
        path="completions",
        model=body.model,
        raw=await raw_body(request),
        needs=completion_needs(body, request, get_settings(request)),
        stream=body.stream,
        include_usage=body.include_usage,
    )
    return await gateway.serve(request, call, local)
