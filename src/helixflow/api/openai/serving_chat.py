"""Chat completions: messages -> prompt tokens -> engine -> OpenAI reply or SSE chunks."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from helixflow.api.openai.logprobs import chat_logprobs
from helixflow.api.openai.params import check_context, sampling_params
from helixflow.api.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    TextContentPart,
)
from helixflow.api.openai.shaping import UsageCounter, finish_reason
from helixflow.api.openai.sse import DONE, ChunkWriter, error_event
from helixflow.engine.base import Engine, GenerationRequest, GenerationStream
from helixflow.engine.registry import EngineRegistry
from helixflow.errors import HelixFlowError, InvalidRequestError


@dataclass(slots=True)
class PreparedChat:
    """A validated chat request, ready to run."""

    request: ChatCompletionRequest
    engine: Engine
    generation: GenerationRequest
    completion_id: str
    created: int

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt_tokens)


def message_dict(message: ChatMessage, index: int) -> dict[str, Any]:
    """A message as chat templates expect it: text content as one string."""
    content = message.content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, TextContentPart):
                raise InvalidRequestError(
                    f"This model accepts text only; message {index} has a {part.type!r} part.",
                    param=f"messages[{index}].content",
                    code="unsupported_content",
                )
            texts.append(part.text)
        content = "".join(texts)
    out: dict[str, Any] = {"role": message.role, "content": content or ""}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


class ChatService:
    def __init__(self, engines: EngineRegistry) -> None:
        self._engines = engines

    def prepare(self, request: ChatCompletionRequest) -> PreparedChat:
        engine = self._engines.get(request.model)
        self._check_unsupported(request)
        messages = [message_dict(m, i) for i, m in enumerate(request.messages)]
        tools = [t.model_dump(exclude_none=True) for t in request.tools or []] or None
        prompt = engine.render_chat(messages, tools=tools)
        max_tokens = check_context(engine, len(prompt), request.token_limit)
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        generation = GenerationRequest(
            request_id=completion_id,
            prompt_tokens=prompt,
            sampling=sampling_params(engine, request, max_tokens=max_tokens, logprobs=logprobs),
            n=request.n,
        )
        return PreparedChat(request, engine, generation, completion_id, int(time.time()))

    @staticmethod
    def _check_unsupported(request: ChatCompletionRequest) -> None:
        fmt = request.response_format
        if fmt is not None and fmt.type != "text":
            raise InvalidRequestError(
                f"response_format {fmt.type!r} is not supported yet by this server",
                param="response_format",
                code="unsupported_response_format",
            )
        choice = request.tool_choice
        if choice not in (None, "auto", "none"):
            raise InvalidRequestError(
                "tool_choice other than 'auto' or 'none' is not supported yet by this server",
                param="tool_choice",
                code="unsupported_tool_choice",
            )

    @staticmethod
    def open(prepared: PreparedChat) -> GenerationStream:
        """Submit the request now, so a full queue is a 429 before any byte is sent."""
        return prepared.engine.generate(prepared.generation)

    async def complete(self, prepared: PreparedChat, stream: GenerationStream) -> ChatCompletion:
        n = prepared.request.n
        texts = [""] * n
        finish: list[str | None] = [None] * n
        token_logprobs: list[list[Any]] = [[] for _ in range(n)]
        counter = UsageCounter(prepared.prompt_tokens)
        try:
            async for delta in stream:
                texts[delta.index] += delta.text
                if delta.logprobs:
                    token_logprobs[delta.index].extend(delta.logprobs)
                if delta.finish_reason is not None:
                    finish[delta.index] = delta.finish_reason
                    counter.add(delta)
        finally:
            stream.cancel()
        want_logprobs = prepared.generation.sampling.logprobs is not None
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=texts[i]),
                logprobs=(
                    ChatChoiceLogprobs.model_validate(chat_logprobs(token_logprobs[i]))
                    if want_logprobs
                    else None
                ),
                finish_reason=finish_reason(finish[i]),
            )
            for i in range(n)
        ]
        return ChatCompletion(
            id=prepared.completion_id,
            created=prepared.created,
            model=prepared.request.model,
            choices=choices,
            usage=counter.usage(),
            system_fingerprint=prepared.engine.info.fingerprint,
        )

    async def stream(
        self, prepared: PreparedChat, deltas: GenerationStream
    ) -> AsyncIterator[bytes]:
        """SSE chunks: role first, content as it comes, one finish chunk per choice, [DONE]."""
        writer = ChunkWriter(
            completion_id=prepared.completion_id,
            object_name="chat.completion.chunk",
            created=prepared.created,
            model=prepared.request.model,
            fingerprint=prepared.engine.info.fingerprint,
            include_usage=prepared.request.include_usage,
        )

        def chunk(
            index: int,
            delta: dict[str, Any],
            logprobs: Any = None,
            finish_reason: str | None = None,
        ) -> bytes:
            return writer.choice(
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                }
            )

        for index in range(prepared.request.n):
            yield chunk(index, {"role": "assistant", "content": ""})
        counter = UsageCounter(prepared.prompt_tokens)
        want_logprobs = prepared.generation.sampling.logprobs is not None
        try:
            async for delta in deltas:
                logprobs = chat_logprobs(delta.logprobs or []) if want_logprobs else None
                if delta.text or delta.logprobs:
                    yield chunk(delta.index, {"content": delta.text}, logprobs)
                if delta.finish_reason is not None:
                    counter.add(delta)
                    yield chunk(delta.index, {}, None, finish_reason(delta.finish_reason))
        except HelixFlowError as exc:
            yield error_event(exc)
            return
        finally:
            deltas.cancel()
        if prepared.request.include_usage:
            yield writer.usage(counter.usage().model_dump())
        yield DONE
