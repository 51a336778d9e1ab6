"""Chat completions: messages -> prompt tokens -> engine -> OpenAI reply or SSE chunks.

Tools and structured output (see ``tools.py``, ``structured.py``) shape the prompt and the
grammar generation follows; with tools on offer, each choice's text goes through the model's
tool-call parser, so replies carry ``tool_calls`` as OpenAI's do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from helixflow.api.openai.logprobs import chat_logprobs
from helixflow.api.openai.params import check_context, sampling_params
from helixflow.api.openai.protocol import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    TextContentPart,
)
from helixflow.api.openai.shaping import (
    UsageCounter,
    assistant_message,
    call_deltas,
    chat_finish_reason,
)
from helixflow.api.openai.sse import DONE, ChunkWriter, error_event
from helixflow.api.openai.structured import check_response_format
from helixflow.api.openai.tool_parsers import (
    Event,
    ParsedCall,
    ParsedOutput,
    ToolCallParser,
    ToolParserRegistry,
    ToolStream,
)
from helixflow.api.openai.tools import (
    ToolPlan,
    check_tool_results,
    conversation,
    output_grammar,
    tool_plan,
)
from helixflow.engine.base import Engine, GenerationRequest, GenerationStream
from helixflow.engine.chat_template import renders_tools
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
    tools: ToolPlan | None = None
    parser: ToolCallParser | None = None
    """Reads calls out of each choice's text; None when no calls can be made."""

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt_tokens)

    @property
    def legacy(self) -> bool:
        return self.tools is not None and self.tools.legacy

    def parse(self, text: str) -> ParsedOutput:
        return self.parser.parse(text) if self.parser is not None else ParsedOutput(text, [])


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
    if message.function_call:
        out["function_call"] = message.function_call.model_dump()
    return out


class ChatService:
    def __init__(self, engines: EngineRegistry, parsers: ToolParserRegistry | None = None) -> None:
        self._engines = engines
        self._parsers = parsers or ToolParserRegistry()
        self._renders_tools: dict[str, bool] = {}
        """Per model: does its chat template render ``tools`` (probed once)."""

    def prepare(self, request: ChatCompletionRequest) -> PreparedChat:
        engine = self._engines.get(request.model)
        plan = tool_plan(request)
        check_tool_results(request.messages)
        check_response_format(request.response_format)
        native = self._native_tools(engine)
        parser = self._parser(engine, plan, native=native)
        messages = [message_dict(m, i) for i, m in enumerate(request.messages)]
        convo = conversation(messages, plan, parser, native=native)
        prompt = engine.render_chat(convo.messages, tools=convo.tools)
        grammar = output_grammar(request.response_format, plan, parser)
        max_tokens = check_context(engine, len(prompt), request.token_limit)
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        generation = GenerationRequest(
            request_id=completion_id,
            prompt_tokens=prompt,
            sampling=sampling_params(
                engine, request, max_tokens=max_tokens, logprobs=logprobs, grammar=grammar
            ),
            n=request.n,
        )
        return PreparedChat(
            request,
            engine,
            generation,
            completion_id,
            int(time.time()),
            tools=plan,
            parser=parser if plan is not None and plan.callable else None,
        )

    def _parser(self, engine: Engine, plan: ToolPlan | None, *, native: bool) -> ToolCallParser:
        """The tool-call format of the model's template, for this request's functions."""
        parser = self._parsers.for_template(engine.info.chat_template, native=native)
        if plan is None:
            return parser(())
        return parser([t.name for t in plan.callable], max_calls=plan.max_calls)

    def _native_tools(self, engine: Engine) -> bool:
        info = engine.info
        native = self._renders_tools.get(info.model_id)
        if native is None:
            native = bool(info.chat_template) and renders_tools(info.chat_template or "")
            self._renders_tools[info.model_id] = native
        return native

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
        choices: list[ChatChoice] = []
        for i in range(n):
            parsed = prepared.parse(texts[i])
            choices.append(
                ChatChoice(
                    index=i,
                    message=assistant_message(parsed, legacy=prepared.legacy),
                    logprobs=(
                        ChatChoiceLogprobs.model_validate(chat_logprobs(token_logprobs[i]))
                        if want_logprobs
                        else None
                    ),
                    finish_reason=chat_finish_reason(
                        finish[i], calls=bool(parsed.calls), legacy=prepared.legacy
                    ),
                )
            )
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
        """SSE chunks: role first, content (and calls) as they come, one finish chunk per
        choice, [DONE]."""
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

        n = prepared.request.n
        for index in range(n):
            yield chunk(index, {"role": "assistant", "content": ""})
        counter = UsageCounter(prepared.prompt_tokens)
        want_logprobs = prepared.generation.sampling.logprobs is not None
        calls = _CallStreams(prepared.parser, n, legacy=prepared.legacy)
        try:
            async for delta in deltas:
                logprobs = chat_logprobs(delta.logprobs or []) if want_logprobs else None
                text, made = calls.feed(
                    delta.index, delta.text, final=delta.finish_reason is not None
                )
                if text or delta.logprobs:
                    yield chunk(delta.index, {"content": text}, logprobs)
                for call_delta in made:
                    yield chunk(delta.index, call_delta)
                if delta.finish_reason is not None:
                    counter.add(delta)
                    reason = chat_finish_reason(
                        delta.finish_reason, calls=calls.made(delta.index), legacy=prepared.legacy
                    )
                    yield chunk(delta.index, {}, None, reason)
        except HelixFlowError as exc:
            yield error_event(exc)
            return
        finally:
            deltas.cancel()
        if prepared.request.include_usage:
            yield writer.usage(counter.usage().model_dump())
        yield DONE


class _CallStreams:
    """Each choice's streamed text split into content and call deltas (plain content when no
    calls can be made)."""

    def __init__(self, parser: ToolCallParser | None, n: int, *, legacy: bool) -> None:
        self._streams: list[ToolStream] | None = (
            [parser.stream() for _ in range(n)] if parser is not None else None
        )
        self._counts = [0] * n
        self._legacy = legacy

    def feed(self, index: int, text: str, *, final: bool) -> tuple[str, list[dict[str, Any]]]:
        if self._streams is None:
            return text, []
        stream = self._streams[index]
        events: list[Event] = stream.feed(text)
        if final:
            events.extend(stream.finish())
        content = "".join(e for e in events if isinstance(e, str))
        deltas: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, ParsedCall):
                deltas.extend(call_deltas(self._counts[index], event, legacy=self._legacy))
                self._counts[index] += 1
        return content, deltas

    def made(self, index: int) -> bool:
        return self._counts[index] > 0
