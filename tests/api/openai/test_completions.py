"""Legacy text completions through the official client: batches, token prompts, echo, logprobs,
stop, streaming."""

from __future__ import annotations

import itertools
from typing import Any

import openai
from openai.types import Completion

MODEL = "smollm2-135m"
PROMPT = "The capital of France is"
OTHER = "1, 2, 3, 4,"
TOKENS = [504, 3458, 282, 1790]
MORE_TOKENS = [504, 1164]


def complete(client: openai.OpenAI, prompt: Any, **fields: Any) -> Completion:
    fields.setdefault("temperature", 0)
    fields.setdefault("max_tokens", 8)
    reply = client.completions.create(model=MODEL, prompt=prompt, **fields)
    assert isinstance(reply, Completion)
    return reply


def test_string_prompt(client: openai.OpenAI) -> None:
    reply = complete(client, PROMPT)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    assert reply.model == MODEL
    assert reply.system_fingerprint
    assert reply.system_fingerprint.startswith("fp_")
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.index == 0
    assert choice.text.strip()
    assert choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    usage = reply.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_list_of_prompts(client: openai.OpenAI) -> None:
    first, second = complete(client, PROMPT), complete(client, OTHER)
    both = complete(client, [PROMPT, OTHER])
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == [first.choices[0].text, second.choices[0].text]
    assert both.usage is not None
    assert first.usage is not None
    assert second.usage is not None
    assert both.usage.prompt_tokens == first.usage.prompt_tokens + second.usage.prompt_tokens
    assert both.usage.completion_tokens == (
        first.usage.completion_tokens + second.usage.completion_tokens
    )


def test_token_array_prompt(client: openai.OpenAI) -> None:
    reply = complete(client, TOKENS, echo=True, logprobs=0)
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(TOKENS)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens is not None
    assert len(logprobs.tokens) == len(TOKENS) + reply.usage.completion_tokens
    prompt_text = "".join(logprobs.tokens[: len(TOKENS)])
    assert prompt_text.strip()
    assert reply.choices[0].text.startswith(prompt_text)
    assert len(reply.choices[0].text) > len(prompt_text)


def test_list_of_token_arrays(client: openai.OpenAI) -> None:
    first, second = complete(client, TOKENS), complete(client, MORE_TOKENS)
    both = complete(client, [TOKENS, MORE_TOKENS])
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == [first.choices[0].text, second.choices[0].text]
    assert both.usage is not None
    assert both.usage.prompt_tokens == len(TOKENS) + len(MORE_TOKENS)


def test_n_two_with_two_prompts(client: openai.OpenAI) -> None:
    first, second = complete(client, PROMPT), complete(client, OTHER)
    reply = complete(client, [PROMPT, OTHER], n=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    # greedy, so each prompt's two choices agree; prompt 0 owns choices 0-1, prompt 1 owns 2-3
    texts = [c.text for c in reply.choices]
    assert texts == [first.choices[0].text] * 2 + [second.choices[0].text] * 2
    assert reply.usage is not None
    assert first.usage is not None
    assert second.usage is not None
    assert reply.usage.completion_tokens == 2 * (
        first.usage.completion_tokens + second.usage.completion_tokens
    )


def test_echo(client: openai.OpenAI) -> None:
    plain = complete(client, PROMPT)
    echoed = complete(client, PROMPT, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert echoed.usage is not None
    assert plain.usage is not None
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens


def test_logprobs(client: openai.OpenAI) -> None:
    reply = complete(client, PROMPT, logprobs=2)
    choice = reply.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None
    assert reply.usage is not None
    tokens, scores = logprobs.tokens, logprobs.token_logprobs
    tops, offsets = logprobs.top_logprobs, logprobs.text_offset
    assert tokens is not None
    assert scores is not None
    assert tops is not None
    assert offsets is not None
    assert len(tokens) == len(scores) == len(tops) == len(offsets)
    assert len(tokens) == reply.usage.completion_tokens
    assert "".join(tokens) == choice.text
    assert offsets[0] == 0
    assert all(a < b for a, b in itertools.pairwise(offsets)), offsets
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    for token, score, top in zip(tokens, scores, tops, strict=True):
        assert score is not None
        assert score <= 0.0
        assert top is not None
        assert 1 <= len(top) <= 2
        assert all(v <= 0.0 for v in top.values())
        # greedy: the chosen token is the most likely one
        assert score >= max(top.values()) - 1e-4
        assert token in top


def test_echo_with_logprobs_scores_the_prompt(client: openai.OpenAI) -> None:
    reply = complete(client, PROMPT, echo=True, logprobs=1, max_tokens=4)
    choice = reply.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None
    assert reply.usage is not None
    tokens, scores, tops = logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs
    offsets = logprobs.text_offset
    assert tokens is not None
    assert scores is not None
    assert tops is not None
    assert offsets is not None
    assert len(tokens) == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert "".join(tokens) == choice.text
    assert choice.text.startswith(PROMPT)
    assert "".join(tokens[: reply.usage.prompt_tokens]) == PROMPT
    # nothing comes before the first token, so nothing scores it
    assert scores[0] is None
    assert tops[0] is None
    assert all(s is not None and s <= 0.0 for s in scores[1:]), scores
    assert all(t is not None and len(t) == 1 for t in tops[1:]), tops
    assert offsets[0] == 0
    assert all(a < b for a, b in itertools.pairwise(offsets)), offsets


def test_stop(client: openai.OpenAI) -> None:
    base = complete(client, PROMPT, max_tokens=24, extra_body={"ignore_eos": True})
    text = base.choices[0].text
    words = text.split()
    assert len(words) > 3, text
    stop = words[2]
    cut = text.index(stop)
    reply = complete(client, PROMPT, max_tokens=24, stop=[stop], extra_body={"ignore_eos": True})
    assert reply.choices[0].text == text[:cut]
    assert reply.choices[0].finish_reason == "stop"


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    reply = complete(client, PROMPT, max_tokens=5, extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5


def test_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt=PROMPT, temperature=0, extra_body={"ignore_eos": True}
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 16


def test_stream_equals_non_streamed(client: openai.OpenAI) -> None:
    prompts = [PROMPT, OTHER]
    full = complete(client, prompts, n=2, max_tokens=12)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=prompts,
            n=2,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [""] * 4
    finishes: list[tuple[int, str]] = []
    for chunk in chunks[:-1]:
        assert chunk.usage is None
        assert len(chunk.choices) == 1
        choice = chunk.choices[0]
        texts[choice.index] += choice.text
        if choice.finish_reason is not None:
            finishes.append((choice.index, choice.finish_reason))
    assert texts == [c.text for c in full.choices]
    assert sorted(finishes) == sorted((c.index, c.finish_reason) for c in full.choices)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert full.usage is not None
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert last.usage.total_tokens == full.usage.total_tokens


def test_stream_without_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, stream=True
        )
    )
    assert chunks
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] in (
        ["length"],
        ["stop"],
    )


def test_streamed_echo(client: openai.OpenAI) -> None:
    full = complete(client, PROMPT, echo=True)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, echo=True, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text


def test_cached_tokens_are_counted_once_per_prompt(client: openai.OpenAI) -> None:
    prompt = "A reused prompt about lighthouses and the sea at night"
    complete(client, prompt, max_tokens=1, temperature=0)  # leaves the prompt's KV cached
    reply = complete(client, prompt, max_tokens=2, temperature=0, n=2)
    assert reply.usage is not None
    details = reply.usage.prompt_tokens_details
    assert details is not None
    # both choices reuse the same prefix: it counts once, and never exceeds the prompt
    assert 0 < (details.cached_tokens or 0) < reply.usage.prompt_tokens
