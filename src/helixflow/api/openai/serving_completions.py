"""Legacy text completions: one prompt or a batch (strings or token arrays), echo, logprobs."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from helixflow.api.openai.logprobs import legacy_logprobs
from helixflow.api.openai.params import check_context, sampling_params
from helixflow.api.openai.protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
)
from helixflow.api.openai.shaping import UsageCounter, finish_reason
from helixflow.api.openai.sse import DONE, ChunkWriter, error_event, merge
from helixflow.engine.base import Delta, Engine, GenerationRequest, GenerationStream, TokenLogprob
from helixflow.engine.registry import EngineRegistry
from helixflow.errors import HelixFlowError, InvalidRequestError

MAX_PROMPTS = 64


@dataclass(slots=True)
class _Choice:
    text: str = ""
    tokens: list[TokenLogprob] = field(default_factory=list)
    prompt_tokens: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass(slots=True)
class PreparedCompletion:
    request: CompletionRequest
    engine: Engine
    generations: list[GenerationRequest]
    prompt_texts: list[str]
    completion_id: str
    created: int

    @property
    def prompt_tokens(self) -> int:
        return sum(len(g.prompt_tokens) for g in self.generations)

    def choice_index(self, prompt_index: int, delta: Delta) -> int:
        return prompt_index * self.request.n + delta.index


class CompletionService:
    def __init__(self, engines: EngineRegistry) -> None:
        self._engines = engines

    def prepare(self, request: CompletionRequest) -> PreparedCompletion:
        engine = self._engines.get(request.model)
        prompts = self._tokenized_prompts(engine, request)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        generations = []
        for i, tokens in enumerate(prompts):
            what = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            max_tokens = check_context(engine, len(tokens), request.max_tokens, what=what)
            wants_prompt_scores = request.echo and request.logprobs is not None
            generations.append(
                GenerationRequest(
                    request_id=f"{completion_id}-{i}",
                    prompt_tokens=tokens,
                    sampling=sampling_params(
                        engine, request, max_tokens=max_tokens, logprobs=request.logprobs
                    ),
                    n=request.n,
                    prompt_logprobs=request.logprobs if wants_prompt_scores else None,
                )
            )
        texts = [engine.detokenize(g.prompt_tokens) if request.echo else "" for g in generations]
        return PreparedCompletion(
            request, engine, generations, texts, completion_id, int(time.time())
        )

    @staticmethod
    def _tokenized_prompts(engine: Engine, request: CompletionRequest) -> list[list[int]]:
        raw = request.prompt
        items: list[str | list[int]] = []
        if isinstance(raw, str):
            items = [raw]
        elif all(isinstance(x, int) for x in raw):
            items = [[x for x in raw if isinstance(x, int)]]
        else:
            items = [x for x in raw if isinstance(x, str | list)]
        if len(items) > MAX_PROMPTS:
            raise InvalidRequestError(
                f"at most {MAX_PROMPTS} prompts per request",
                param="prompt",
                code="too_many_prompts",
            )
        prompts: list[list[int]] = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                tokens = engine.tokenize(item, add_special=True)
                if not tokens:
                    raise InvalidRequestError("the prompt is empty", param="prompt")
            else:
                bad = next((t for t in item if not 0 <= t < engine.info.vocab_size), None)
                if bad is not None:
                    raise InvalidRequestError(
                        f"prompt[{i}] holds token {bad}, outside this model's vocabulary "
                        f"(0..{engine.info.vocab_size - 1})",
                        param="prompt",
                        code="invalid_token",
                    )
                tokens = list(item)
            prompts.append(tokens)
        return prompts

    @staticmethod
    def open(prepared: PreparedCompletion) -> list[GenerationStream]:
        """Submit every prompt now, so a full queue is a 429 before any byte is sent."""
        streams: list[GenerationStream] = []
        try:
            for generation in prepared.generations:
                streams.append(prepared.engine.generate(generation))
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        return streams

    async def complete(
        self, prepared: PreparedCompletion, opened: list[GenerationStream]
    ) -> Completion:
        n_choices = len(prepared.generations) * prepared.request.n
        choices = [_Choice() for _ in range(n_choices)]
        counter = UsageCounter(prepared.prompt_tokens)
        try:
            async for prompt_index, delta in merge(_tagged(opened)):
                choice = choices[prepared.choice_index(prompt_index, delta)]
                choice.text += delta.text
                choice.tokens.extend(delta.logprobs or [])
                choice.prompt_tokens.extend(delta.prompt_logprobs or [])
                if delta.finish_reason is not None:
                    choice.finish_reason = delta.finish_reason
                    counter.add(delta)
        finally:
            for stream in opened:
                stream.cancel()
        out = []
        for index, choice in enumerate(choices):
            echo = prepared.prompt_texts[index // prepared.request.n]
            logprobs = None
            if prepared.request.logprobs is not None:
                scored = (
                    choice.prompt_tokens + choice.tokens if prepared.request.echo else choice.tokens
                )
                logprobs = CompletionLogprobs.model_validate(legacy_logprobs(scored))
            out.append(
                CompletionChoice(
                    index=index,
                    text=echo + choice.text,
                    logprobs=logprobs,
                    finish_reason=finish_reason(choice.finish_reason),
                )
            )
        return Completion(
            id=prepared.completion_id,
            created=prepared.created,
            model=prepared.request.model,
            choices=out,
            usage=counter.usage(),
            system_fingerprint=prepared.engine.info.fingerprint,
        )

    async def stream(
        self, prepared: PreparedCompletion, opened: list[GenerationStream]
    ) -> AsyncIterator[bytes]:
        request = prepared.request
        offsets = [0] * (len(prepared.generations) * request.n)
        writer = ChunkWriter(
            completion_id=prepared.completion_id,
            object_name="text_completion",
            created=prepared.created,
            model=request.model,
            fingerprint=prepared.engine.info.fingerprint,
            include_usage=request.include_usage,
        )

        def chunk(index: int, text: str, logprobs: Any, finish: str | None) -> bytes:
            return writer.choice(
                {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            )

        counter = UsageCounter(prepared.prompt_tokens)
        try:
            if request.echo:
                for index in range(len(offsets)):
                    text = prepared.prompt_texts[index // request.n]
                    offsets[index] = len(text)
                    if text and request.logprobs is None:
                        yield chunk(index, text, None, None)
            async for prompt_index, delta in merge(_tagged(opened)):
                index = prepared.choice_index(prompt_index, delta)
                if delta.prompt_logprobs:
                    scores = legacy_logprobs(delta.prompt_logprobs)
                    yield chunk(index, "".join(scores["tokens"]), scores, None)
                logprobs = None
                if request.logprobs is not None and delta.logprobs:
                    logprobs = legacy_logprobs(delta.logprobs, offsets[index])
                if delta.text or logprobs:
                    yield chunk(index, delta.text, logprobs, None)
                    offsets[index] += len(delta.text)
                if delta.finish_reason is not None:
                    counter.add(delta)
                    yield chunk(index, "", None, finish_reason(delta.finish_reason))
        except HelixFlowError as exc:
            yield error_event(exc)
            return
        finally:
            for stream in opened:
                stream.cancel()
        if request.include_usage:
            yield writer.usage(counter.usage().model_dump())
        yield DONE


def _tagged(streams: list[GenerationStream]) -> list[AsyncIterator[tuple[int, Delta]]]:
    """Each stream's deltas paired with the index of its prompt (closing is the caller's)."""

    async def tag(index: int, stream: GenerationStream) -> AsyncIterator[tuple[int, Delta]]:
        async for delta in stream:
            yield index, delta

    return [tag(i, stream) for i, stream in enumerate(streams)]
