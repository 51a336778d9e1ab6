"""The continuous-batching scheduler, driven through the engine in-process on the real model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from helixflow.config import ModelConfig
from helixflow.engine.base import Delta, GenerationRequest, SamplingParams
from helixflow.engine.llamacpp import LlamaCppEngine
from helixflow.errors import QueueFullError

pytestmark = pytest.mark.timeout(300)

CHAT = [{"role": "user", "content": "Tell me about the moon in two sentences."}]


async def started(**overrides: object) -> LlamaCppEngine:
    config = ModelConfig.model_validate({"id": "m", "bundled": "smollm2-135m", **overrides})
    engine = LlamaCppEngine(config)
    await engine.start()
    return engine


async def collect(stream: AsyncIterator[Delta]) -> dict[int, list[Delta]]:
    out: dict[int, list[Delta]] = {}
    async for delta in stream:
        out.setdefault(delta.index, []).append(delta)
    return out


def greedy(max_tokens: int, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)  # type: ignore[arg-type]


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


async def test_prefix_reuse_gives_identical_reply() -> None:
    engine = await started()
    try:
        prompt = engine.render_chat(CHAT)
        first = await collect(engine.generate(GenerationRequest("a", prompt, greedy(24))))
        second = await collect(engine.generate(GenerationRequest("b", prompt, greedy(24))))
        assert first[0][-1].cached_tokens == 0
        assert second[0][-1].cached_tokens == len(prompt) - 1
        assert text_of(first[0]) == text_of(second[0])
        stats = engine.stats()
        assert stats.prompt_tokens_reused >= len(prompt) - 1
    finally:
        await engine.stop()


async def test_shared_prefix_is_copied_from_a_busy_slot() -> None:
    engine = await started(parallel=2, context_size=2048)
    try:
        system = {"role": "system", "content": "You answer in French. " * 10}
        prompt_a = engine.render_chat([system, {"role": "user", "content": "Hi"}])
        prompt_b = engine.render_chat([system, {"role": "user", "content": "Bye"}])
        stream_a = engine.generate(GenerationRequest("a", prompt_a, greedy(40, ignore_eos=True)))
        await stream_a.__anext__()  # A is running and holds the system prompt's KV
        result_b = await collect(engine.generate(GenerationRequest("b", prompt_b, greedy(4))))
        await stream_a.aclose()
        shared = next(i for i, (x, y) in enumerate(zip(prompt_a, prompt_b, strict=False)) if x != y)
        assert result_b[0][-1].cached_tokens == shared
    finally:
        await engine.stop()


async def test_n_shares_the_prompt_and_finishes_every_choice() -> None:
    engine = await started()
    try:
        prompt = engine.render_chat(CHAT)
        result = await collect(engine.generate(GenerationRequest("a", prompt, greedy(10), n=3)))
        assert sorted(result) == [0, 1, 2]
        texts = {text_of(d) for d in result.values()}
        assert len(texts) == 1  # greedy: every choice is the same
        for deltas in result.values():
            assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]
            assert deltas[-1].completion_tokens == 10
        # the prompt was computed once
        assert engine.stats().prompt_tokens_processed == len(prompt)
    finally:
        await engine.stop()


async def test_long_prompt_prefill_interleaves_with_decoding() -> None:
    engine = await started(parallel=2, context_size=4096, prefill_chunk=16)
    try:
        short = engine.render_chat(CHAT)
        long_prompt = engine.render_chat(
            [{"role": "user", "content": "Summarise: " + "the quick brown fox " * 120}]
        )
        assert len(long_prompt) > 400
        stream_a = engine.generate(GenerationRequest("a", short, greedy(200, ignore_eos=True)))
        await stream_a.__anext__()
        events: list[str] = []

        async def drain_a() -> None:
            async for delta in stream_a:
                events.append("a")
                if delta.finish_reason:
                    return

        async def run_b() -> None:
            async for _ in engine.generate(GenerationRequest("b", long_prompt, greedy(1))):
                events.append("b")
                return

        task_a = asyncio.create_task(drain_a())
        await run_b()
        await stream_a.aclose()
        task_a.cancel()
        # While B's ~400-token prompt was fed 16 tokens per step, A kept producing tokens.
        first_b = events.index("b")
        assert events[:first_b].count("a") >= 10
    finally:
        await engine.stop()


async def test_queue_limit_rejects_with_retry_after() -> None:
    engine = await started(parallel=1, context_size=512, max_queue=0)
    try:
        prompt = engine.render_chat(CHAT)
        running = engine.generate(GenerationRequest("a", prompt, greedy(100, ignore_eos=True)))
        await running.__anext__()
        with pytest.raises(QueueFullError) as caught:
            engine.generate(GenerationRequest("b", prompt, greedy(4)))
        assert caught.value.headers["Retry-After"] == "1"
        await running.aclose()
    finally:
        await engine.stop()


async def test_waiting_requests_are_served_in_turn() -> None:
    engine = await started(parallel=1, context_size=512, max_queue=8)
    try:
        prompt = engine.render_chat(CHAT)
        results = await asyncio.gather(
            *(
                collect(engine.generate(GenerationRequest(f"r{i}", prompt, greedy(6))))
                for i in range(4)
            )
        )
        assert all(r[0][-1].completion_tokens == 6 for r in results)
        assert engine.stats().queued_requests == 0
    finally:
        await engine.stop()


async def test_cancel_frees_the_sequence() -> None:
    engine = await started()
    try:
        prompt = engine.render_chat(CHAT)
        stream = engine.generate(GenerationRequest("a", prompt, greedy(500, ignore_eos=True)))
        await stream.__anext__()
        assert engine.stats().active_sequences == 1
        await stream.aclose()
        for _ in range(100):
            if engine.stats().active_sequences == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.stats().active_sequences == 0
    finally:
        await engine.stop()


async def test_unified_pool_preempts_and_still_finishes_everything() -> None:
    # 4 sequences of ~35 prompt + 80 generated tokens cannot all fit in 256 cells at once.
    engine = await started(parallel=4, context_size=256, kv_unified=True)
    try:
        prompt = engine.render_chat(CHAT)
        results = await asyncio.gather(
            *(
                collect(
                    engine.generate(GenerationRequest(f"r{i}", prompt, greedy(80, ignore_eos=True)))
                )
                for i in range(4)
            )
        )
        for result in results:
            assert result[0][-1].finish_reason == "length"
            assert result[0][-1].completion_tokens == 80
    finally:
        await engine.stop()


async def test_per_sequence_share_ends_with_length() -> None:
    engine = await started(parallel=4, context_size=256)
    try:
        assert engine.info.context_size == 256  # 256 / 4, rounded up to llama.cpp's 256
        prompt = engine.render_chat(CHAT)
        limit = engine.info.context_size
        result = await collect(
            engine.generate(GenerationRequest("a", prompt, greedy(limit, ignore_eos=True)))
        )
        assert result[0][-1].finish_reason == "length"
        assert len(prompt) + result[0][-1].completion_tokens <= limit
    finally:
        await engine.stop()


async def test_prompt_logprobs_score_every_prompt_token() -> None:
    engine = await started()
    try:
        prompt = engine.tokenize("The capital of France is")
        result = await collect(
            engine.generate(
                GenerationRequest("a", prompt, greedy(2, logprobs=1), prompt_logprobs=1)
            )
        )
        scored = [t for d in result[0] for t in d.prompt_logprobs or []]
        assert len(scored) == len(prompt)
        assert scored[0].logprob is None
        assert all(t.logprob is not None and t.logprob <= 0 for t in scored[1:])
        assert [t.token_id for t in scored] == prompt
    finally:
        await engine.stop()


async def test_compaction_moves_a_sequence_without_changing_its_reply() -> None:
    engine = await started(parallel=4, context_size=4096)
    try:
        prompts = [
            engine.render_chat([{"role": "user", "content": f"Count to {n}, please."}])
            for n in (3, 5, 7)
        ]
        alone = await collect(engine.generate(GenerationRequest("solo", prompts[2], greedy(40))))
        streams = [
            engine.generate(GenerationRequest(f"r{i}", p, greedy(40, ignore_eos=i < 2)))
            for i, p in enumerate(prompts)
        ]
        heads = [await stream.__anext__() for stream in streams]  # slots 0, 1 and 2 busy
        moves = engine.stats().sequence_moves
        await streams[0].aclose()  # frees slot 0: the sequence in slot 2 moves down
        rest = [delta async for delta in streams[2]]
        await streams[1].aclose()
        assert engine.stats().sequence_moves > moves
        assert heads[2].text + text_of(rest) == text_of(alone[0])
    finally:
        await engine.stop()
