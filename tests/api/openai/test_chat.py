"""Chat completions through the official client, on two models with different templates."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.conftest import CHAT_MODELS, wait_idle

PROMPT = [{"role": "user", "content": "Write three sentences about the sea."}]


@pytest.fixture(params=CHAT_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_stream_equals_non_streamed_reply(client: openai.OpenAI, model: str) -> None:
    full = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=40, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model=model, messages=PROMPT, max_tokens=40, temperature=0, stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert full.choices[0].message.content
    assert streamed == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [full.choices[0].finish_reason]
    assert full.object == "chat.completion"
    assert full.system_fingerprint
    assert full.system_fingerprint.startswith("fp_")


def test_max_tokens_gives_length(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=5, temperature=0
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


def test_max_completion_tokens_is_honoured(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model, messages=PROMPT, max_completion_tokens=3, temperature=0
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 3


def test_stop_sequence_is_matched_and_not_emitted(client: openai.OpenAI, model: str) -> None:
    base = (
        client.chat.completions.create(model=model, messages=PROMPT, max_tokens=40, temperature=0)
        .choices[0]
        .message.content
        or ""
    )
    words = base.split()
    assert len(words) > 4, base
    stop = " " + words[3]  # a word in the middle, likely spanning token boundaries
    cut = base.index(stop)
    for stream in (False, True):
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=model,
                    messages=PROMPT,
                    max_tokens=40,
                    temperature=0,
                    stop=[stop],
                    stream=True,
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [
                c.choices[0].finish_reason
                for c in chunks
                if c.choices and c.choices[0].finish_reason
            ]
            assert finish == ["stop"]
        else:
            reply = client.chat.completions.create(
                model=model, messages=PROMPT, max_tokens=40, temperature=0, stop=stop
            )
            text = reply.choices[0].message.content or ""
            assert reply.choices[0].finish_reason == "stop"
        assert text == base[:cut]
        assert stop not in text


def test_n_two_choices(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=8, n=2, temperature=1.0, seed=7
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.message.content for c in reply.choices)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 16


def test_n_two_streamed_each_choice_finishes_once(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model, messages=PROMPT, max_tokens=6, n=2, temperature=0, stream=True
        )
    )
    finishes = [
        (c.choices[0].index, c.choices[0].finish_reason)
        for c in chunks
        if c.choices and c.choices[0].finish_reason
    ]
    assert sorted(finishes) == [(0, "length"), (1, "length")]


def test_logprobs_count_equals_completion_tokens(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    assert reply.usage is not None
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0.0
        assert len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert entry.logprob >= max(t.logprob for t in entry.top_logprobs) - 1e-4
    assert "".join(e.token for e in content).strip()


def test_streamed_logprobs(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=PROMPT,
            max_tokens=6,
            temperature=0,
            logprobs=True,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    entries = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or []
    ]
    assert chunks[-1].usage is not None
    assert len(entries) == chunks[-1].usage.completion_tokens == 6


def test_same_seed_same_text(client: openai.OpenAI, model: str) -> None:
    def sample(seed: int) -> str:
        return (
            client.chat.completions.create(
                model=model, messages=PROMPT, max_tokens=24, temperature=1.0, top_p=0.95, seed=seed
            )
            .choices[0]
            .message.content
            or ""
        )

    assert sample(1234) == sample(1234)


def test_include_usage_chunk(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=PROMPT,
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_multi_turn_reuses_prefix(client: openai.OpenAI, model: str) -> None:
    system = {"role": "system", "content": "You are a terse assistant. " * 8}
    first = [system, {"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(model=model, messages=first, max_tokens=8, temperature=0)
    second = [
        *first,
        {"role": "assistant", "content": reply.choices[0].message.content},
        {"role": "user", "content": "Another one."},
    ]
    again = client.chat.completions.create(
        model=model, messages=second, max_tokens=8, temperature=0
    )
    assert again.usage is not None
    assert again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens >= 40


def test_sampling_parameters_are_accepted(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model,
        messages=PROMPT,
        max_tokens=8,
        temperature=0.7,
        top_p=0.9,
        frequency_penalty=0.5,
        presence_penalty=0.5,
        seed=3,
        user="tester",
        logit_bias={"0": -100},
        extra_body={"top_k": 20, "min_p": 0.05, "repeat_penalty": 1.1},
    )
    assert reply.choices[0].message.content


def test_logit_bias_forces_a_token(client: openai.OpenAI, model: str) -> None:
    def forced(prompt: str) -> list[str]:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=3,
            temperature=0,
            logprobs=True,
            logit_bias={"1000": 100},
        )
        return [e.token for e in reply.choices[0].logprobs.content]  # type: ignore[union-attr]

    first, second = forced("Hello"), forced("Tell me a story about a dragon.")
    assert len(set(first)) == 1
    assert first == second


def test_parallel_streams_interleave(client: openai.OpenAI, model: str) -> None:
    streams = 8
    arrivals: list[list[float]] = [[] for _ in range(streams)]
    errors: list[BaseException] = []
    finishes: list[str | None] = [None] * streams

    def run(i: int) -> None:
        try:
            prompt = [{"role": "user", "content": f"Count from {i} to {i + 30}."}]
            for chunk in client.chat.completions.create(
                model=model,
                messages=prompt,
                max_tokens=24,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals[i].append(time.monotonic())
                if chunk.choices and chunk.choices[0].finish_reason:
                    finishes[i] = chunk.choices[0].finish_reason
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert finishes == ["length"] * streams
    assert all(arrivals), arrivals
    # No stream waited for another to finish: every stream's first token came before
    # every other stream's last token.
    first_tokens = [a[0] for a in arrivals]
    last_tokens = [a[-1] for a in arrivals]
    assert max(first_tokens) < min(last_tokens)


def test_disconnect_frees_the_slot(base_url: str, http: httpx.Client, model: str) -> None:
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": 1500,
        "stream": True,
        "temperature": 0,
        "ignore_eos": True,
    }
    with (
        httpx.Client(base_url=base_url, timeout=60) as own,
        own.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = 0
        # Hold the iterator: a dropped one is closed, and closing it closes the response.
        events = response.iter_lines()
        for line in events:
            if line.startswith("data:"):
                lines += 1
            if lines >= 5:
                break
        busy = next(m for m in http.get("/ready").json()["models"] if m["id"] == model)
        assert busy["active_sequences"] >= 1
    wait_idle(http, model)
