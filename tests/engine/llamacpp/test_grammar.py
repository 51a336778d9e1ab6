"""Grammar-constrained sampling through the engine, in-process on the real model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from jsonschema import Draft202012Validator

from helixflow.config import ModelConfig
from helixflow.engine.base import Delta, GenerationRequest, SamplingParams
from helixflow.engine.grammar import schema_grammar
from helixflow.engine.llamacpp import LlamaCppEngine
from helixflow.engine.llamacpp import sampling as sampling_module
from helixflow.engine.llamacpp.sampling import GrammarError

pytestmark = pytest.mark.timeout(300)

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "population": {"type": "integer", "minimum": 0, "maximum": 100_000_000},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "population", "capital"],
    "additionalProperties": False,
}
CHAT = [{"role": "user", "content": "Describe Paris as JSON with city, population, capital."}]


@pytest.fixture
async def engine() -> AsyncIterator[LlamaCppEngine]:
    config = ModelConfig.model_validate(
        {"id": "m", "bundled": "smollm2-135m", "parallel": 4, "context_size": 2048}
    )
    started = LlamaCppEngine(config)
    await started.start()
    yield started
    await started.stop()


async def run(engine: LlamaCppEngine, request: GenerationRequest) -> dict[int, list[Delta]]:
    out: dict[int, list[Delta]] = {}
    async for delta in engine.generate(request):
        out.setdefault(delta.index, []).append(delta)
    return out


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


async def test_greedy_output_follows_the_schema_and_stops(engine: LlamaCppEngine) -> None:
    sampling = SamplingParams(max_tokens=120, temperature=0.0, grammar=schema_grammar(SCHEMA))
    result = await run(engine, GenerationRequest("a", engine.render_chat(CHAT), sampling))
    deltas = result[0]
    assert deltas[-1].finish_reason == "stop"
    document = json.loads(text_of(deltas))
    Draft202012Validator(SCHEMA).validate(document)


async def test_greedy_shortlist_picks_what_masking_everything_picks(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy picks try the best tokens one by one before masking the whole vocabulary;
    the result must be the same as masking first."""
    sampling = SamplingParams(
        max_tokens=120, temperature=0.0, repeat_penalty=1.3, grammar=schema_grammar(SCHEMA)
    )
    prompt = engine.render_chat(CHAT)
    fast = text_of((await run(engine, GenerationRequest("a", prompt, sampling)))[0])
    monkeypatch.setattr(sampling_module, "GREEDY_SHORTLIST", 0)
    masked = text_of((await run(engine, GenerationRequest("b", prompt, sampling)))[0])
    assert fast == masked
    json.loads(fast)


async def test_logprobs_are_reported_under_a_grammar(engine: LlamaCppEngine) -> None:
    sampling = SamplingParams(
        max_tokens=120, temperature=0.0, grammar=schema_grammar(SCHEMA), logprobs=2
    )
    result = await run(engine, GenerationRequest("a", engine.render_chat(CHAT), sampling))
    deltas = result[0]
    tokens = [lp for d in deltas for lp in d.logprobs or []]
    assert len(tokens) == deltas[-1].completion_tokens
    assert all(t.logprob is not None and t.logprob <= 0.0 for t in tokens)
    assert all(len(t.top) == 2 for t in tokens)
    assert "".join(t.token for t in tokens) == text_of(deltas)


async def test_generation_ends_when_the_grammar_is_complete_even_with_ignore_eos(
    engine: LlamaCppEngine,
) -> None:
    sampling = SamplingParams(
        max_tokens=50, temperature=0.0, ignore_eos=True, grammar='root ::= "yes" | "no"\n'
    )
    result = await run(engine, GenerationRequest("a", engine.render_chat(CHAT), sampling))
    deltas = result[0]
    assert text_of(deltas) in ("yes", "no")
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].completion_tokens < 50


async def test_seeded_random_choices_follow_the_grammar(engine: LlamaCppEngine) -> None:
    grammar = schema_grammar(
        {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 4}
    )
    sampling = SamplingParams(max_tokens=60, temperature=1.5, top_k=50, seed=11, grammar=grammar)
    request = GenerationRequest("a", engine.render_chat(CHAT), sampling, n=3)
    result = await run(engine, request)
    assert sorted(result) == [0, 1, 2]
    for deltas in result.values():
        colors = json.loads(text_of(deltas))
        assert len(colors) <= 4
        assert set(colors) <= {"red", "green", "blue"}
    again = await run(engine, GenerationRequest("b", engine.render_chat(CHAT), sampling, n=3))
    assert {i: text_of(d) for i, d in again.items()} == {i: text_of(d) for i, d in result.items()}


async def test_a_broken_grammar_is_refused_before_it_runs(engine: LlamaCppEngine) -> None:
    sampling = SamplingParams(max_tokens=8, grammar='root ::= "a" missing-rule\n')
    with pytest.raises(GrammarError) as caught:
        engine.generate(GenerationRequest("bad", engine.render_chat(CHAT), sampling))
    assert caught.value.status_code == 400
    assert caught.value.code == "invalid_grammar"
    assert engine.stats().active_sequences == 0
    ok = SamplingParams(max_tokens=4, temperature=0.0)
    result = await run(engine, GenerationRequest("ok", engine.render_chat(CHAT), ok))
    assert result[0][-1].finish_reason is not None


async def test_constrained_and_free_sequences_share_a_batch(engine: LlamaCppEngine) -> None:
    """A grammar applies to its own sequence only; the free one beside it is unchanged."""
    free = SamplingParams(max_tokens=16, temperature=0.0)
    alone = await run(engine, GenerationRequest("alone", engine.render_chat(CHAT), free))
    constrained = SamplingParams(max_tokens=120, temperature=0.0, grammar=schema_grammar(SCHEMA))
    first = engine.generate(GenerationRequest("c", engine.render_chat(CHAT), constrained))
    second = engine.generate(GenerationRequest("f", engine.render_chat(CHAT), free))
    texts: dict[str, str] = {"c": "", "f": ""}
    for name, stream in (("c", first), ("f", second)):
        async for delta in stream:
            texts[name] += delta.text
    json.loads(texts["c"])
    assert texts["f"] == text_of(alone[0])
