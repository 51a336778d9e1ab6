"""From validated OpenAI request fields to engine sampling parameters (with the checks that
need the model: vocabulary and context length)."""

from __future__ import annotations

from helixflow.api.openai.protocol import SamplingFields
from helixflow.engine.base import Engine, SamplingParams
from helixflow.errors import ContextLengthExceededError, InvalidRequestError


def check_context(
    engine: Engine, prompt_tokens: int, requested: int | None, *, what: str = "messages"
) -> int:
    """Return the completion budget; raise a 400 with the counts when it cannot fit."""
    limit = engine.info.context_size
    if prompt_tokens >= limit:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {limit} tokens. However, your {what} "
            f"resulted in {prompt_tokens} tokens, which leaves no room for a completion. "
            "Please reduce the length of the input.",
            param=what,
        )
    room = limit - prompt_tokens
    if requested is not None and requested > room:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {what}, {requested} "
            "in the completion). Please reduce the length of the input or the completion.",
            param="max_tokens",
        )
    return requested if requested is not None else room


def logit_bias_for(engine: Engine, fields: SamplingFields) -> dict[int, float]:
    if not fields.logit_bias:
        return {}
    vocab = engine.info.vocab_size
    bias: dict[int, float] = {}
    for key, value in fields.logit_bias.items():
        token = int(key)
        if not 0 <= token < vocab:
            raise InvalidRequestError(
                f"logit_bias refers to token {token}, outside this model's vocabulary "
                f"(0..{vocab - 1})",
                param="logit_bias",
                code="invalid_logit_bias",
            )
        bias[token] = value
    return bias


def sampling_params(
    engine: Engine,
    fields: SamplingFields,
    *,
    max_tokens: int,
    logprobs: int | None,
    grammar: str | None = None,
) -> SamplingParams:
    repeat = fields.repeat_penalty or fields.repetition_penalty or 1.0
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if fields.temperature is None else fields.temperature,
        top_p=1.0 if fields.top_p is None else fields.top_p,
        top_k=max(fields.top_k or 0, 0),
        min_p=fields.min_p or 0.0,
        seed=None if fields.seed is None else fields.seed & 0xFFFFFFFF,
        repeat_penalty=repeat,
        frequency_penalty=fields.frequency_penalty or 0.0,
        presence_penalty=fields.presence_penalty or 0.0,
        logit_bias=logit_bias_for(engine, fields),
        stop=tuple(fields.stops),
        logprobs=logprobs,
        ignore_eos=fields.ignore_eos,
        grammar=grammar,
    )
