"""The llama.cpp embedder, in-process on the bundled models: vectors, pooling, batching."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from helixflow.config import ModelConfig
from helixflow.engine.embedding import Embedder, check_dimensions
from helixflow.engine.llamacpp.embedding import LlamaCppEmbedder
from helixflow.engine.llamacpp.embedding_worker import ROW_ALIGN, plan_batch
from helixflow.errors import InvalidRequestError

pytestmark = pytest.mark.timeout(300)

TEXTS = [
    "The cat sat on the mat.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates.",
    "A",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. " * 3,
    "¿Dónde está la biblioteca? 图书馆在哪里",
    "def add(a, b):\n    return a + b\n",
    "The cat sat on the mat!",
    "Rain again.",
]


def make(bundled: str = "smollm2-135m", **overrides: Any) -> LlamaCppEmbedder:
    config = ModelConfig.model_validate(
        {"id": "e", "bundled": bundled, "embedding": True, "parallel": 8, **overrides}
    )
    return LlamaCppEmbedder(config)


def run_apart(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on an event loop of its own (a module fixture may be set up while a test's
    loop runs); the embedder serves any loop that awaits it."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


def embedder(bundled: str = "smollm2-135m", **overrides: Any) -> Iterator[LlamaCppEmbedder]:
    engine = make(bundled, **overrides)
    run_apart(engine.start())
    try:
        yield engine
    finally:
        run_apart(engine.stop())


@contextlib.asynccontextmanager
async def started(**overrides: Any) -> AsyncIterator[LlamaCppEmbedder]:
    engine = make(**overrides)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppEmbedder]:
    yield from embedder(matryoshka_dims=[64, 128])


@pytest.fixture(scope="module")
def gemma3() -> Iterator[LlamaCppEmbedder]:
    yield from embedder("gemma3-270m")


def tokens_of(engine: LlamaCppEmbedder, texts: list[str] = TEXTS) -> list[list[int]]:
    return [engine.tokenize(text) for text in texts]


async def test_one_unit_vector_of_the_model_size_per_input_in_order(
    smollm2: LlamaCppEmbedder,
) -> None:
    assert isinstance(smollm2, Embedder)
    inputs = tokens_of(smollm2)
    vectors = await smollm2.embed(inputs)
    assert len(vectors) == len(inputs)
    for vector in vectors:
        assert vector.dtype == np.float32
        assert vector.shape == (smollm2.dimensions,) == (576,)
        assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)
    # in order: the two near-identical sentences are each other's nearest neighbours
    sims = np.stack(vectors) @ np.stack(vectors).T
    np.fill_diagonal(sims, -1)
    assert int(np.argmax(sims[0])) == 6
    assert int(np.argmax(sims[6])) == 0


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
async def test_a_batch_gives_exactly_the_vectors_of_single_inputs(
    model: str, request: pytest.FixtureRequest
) -> None:
    """Lengths not a multiple of ROW_ALIGN, on Q4_1 (SmolLM2) and repacked Q4_K (Gemma 3)."""
    engine: LlamaCppEmbedder = request.getfixturevalue(model)
    inputs = tokens_of(engine)
    assert {len(t) % ROW_ALIGN for t in inputs} - {0}
    singles = [(await engine.embed([tokens]))[0] for tokens in inputs]
    steps = engine.stats().steps
    batched = await engine.embed(inputs)
    assert engine.stats().steps - steps < len(inputs)  # several inputs per decode
    for single, vector in zip(singles, batched, strict=True):
        np.testing.assert_array_equal(vector, single)
    reordered = await engine.embed(inputs[::-1])
    for single, vector in zip(singles[::-1], reordered, strict=True):
        np.testing.assert_array_equal(vector, single)


async def test_concurrent_requests_share_decodes_and_keep_their_vectors(
    smollm2: LlamaCppEmbedder,
) -> None:
    inputs = tokens_of(smollm2)
    singles = [(await smollm2.embed([tokens]))[0] for tokens in inputs]
    steps = smollm2.stats().steps
    results = await asyncio.gather(*(smollm2.embed([tokens]) for tokens in inputs))
    assert smollm2.stats().steps - steps < len(inputs)
    for single, (vector,) in zip(singles, results, strict=True):
        np.testing.assert_array_equal(vector, single)


async def test_matryoshka_dimensions_cut_then_renormalize(smollm2: LlamaCppEmbedder) -> None:
    inputs = tokens_of(smollm2)[:3]
    full = await smollm2.embed(inputs)
    cut = await smollm2.embed(inputs, dimensions=64)
    for whole, short in zip(full, cut, strict=True):
        assert short.shape == (64,)
        assert float(np.linalg.norm(short)) == pytest.approx(1.0, abs=1e-5)
        expected = whole[:64] / np.linalg.norm(whole[:64])
        np.testing.assert_allclose(short, expected, atol=1e-6)


async def test_cls_pooling_of_a_causal_model_sees_only_the_first_token() -> None:
    """With causal attention the first token's state depends on nothing after it, nor on
    the other inputs of the batch; without normalization the raw scale is kept."""
    async with started(pooling="cls", normalize=False) as engine:
        texts = ["Hello there", "Hello world, again", "Goodbye"]
        first = await engine.embed(tokens_of(engine, texts))
        np.testing.assert_array_equal(first[0], first[1])
        assert not np.array_equal(first[0], first[2])
        assert float(np.linalg.norm(first[0])) != pytest.approx(1.0, abs=1e-3)


async def test_last_pooling_differs_from_mean(smollm2: LlamaCppEmbedder) -> None:
    inputs = tokens_of(smollm2)[:2]
    mean = await smollm2.embed(inputs)
    async with started(pooling="last") as engine:
        last = await engine.embed(inputs)
        assert float(np.dot(mean[1], last[1])) < 0.999


async def test_bad_inputs_are_refused(smollm2: LlamaCppEmbedder) -> None:
    assert smollm2.max_input_tokens == 512
    with pytest.raises(InvalidRequestError):
        await smollm2.embed([[1] * (smollm2.max_input_tokens + 1)])
    with pytest.raises(InvalidRequestError):
        await smollm2.embed([[]])
    with pytest.raises(InvalidRequestError):
        await smollm2.embed([[smollm2.info.vocab_size]])
    # the longest input still fits one decode
    vectors = await smollm2.embed([[1] * smollm2.max_input_tokens])
    assert vectors[0].shape == (576,)


async def test_a_cancelled_request_leaves_the_engine_serving(smollm2: LlamaCppEmbedder) -> None:
    inputs = tokens_of(smollm2) * 8
    task = asyncio.ensure_future(smollm2.embed(inputs))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    expected = (await smollm2.embed(inputs[:1]))[0]
    again = await smollm2.embed(inputs[:2])
    np.testing.assert_array_equal(again[0], expected)
    assert smollm2.stats().queued_requests == 0


# -- planning a decode ----------------------------------------------------------------------------
def test_plan_batch_starts_with_the_oldest_and_groups_similar_lengths() -> None:
    lengths = [30, 500, 7, 31, 33, 200]
    chosen = plan_batch(lengths, max_seqs=8, max_rows=512)
    assert chosen[0] == 0
    # every chosen input is padded to the longest chosen one: 40 rows x 5 inputs
    assert sorted(chosen) == [0, 2, 3, 4]
    assert plan_batch(lengths, max_seqs=2, max_rows=512) == [0, 3]
    assert plan_batch([500, 7], max_seqs=8, max_rows=512) == [0]


# -- dimensions and configuration ------------------------------------------------------------------
def config(**fields: Any) -> ModelConfig:
    return ModelConfig.model_validate({"id": "e", "bundled": "smollm2-135m", **fields})


def test_check_dimensions() -> None:
    matryoshka = config(embedding=True, matryoshka_dims=[256, 64])
    assert matryoshka.matryoshka_dims == [64, 256]
    assert check_dimensions(matryoshka, 576, None) is None
    assert check_dimensions(matryoshka, 576, 576) is None
    assert check_dimensions(matryoshka, 576, 64) == 64
    with pytest.raises(InvalidRequestError) as info:
        check_dimensions(matryoshka, 576, 100)
    assert info.value.param == "dimensions"
    assert "64, 256, 576" in info.value.message
    with pytest.raises(InvalidRequestError) as info:
        check_dimensions(config(embedding=True), 576, 64)
    assert info.value.param == "dimensions"


@pytest.mark.parametrize(
    "fields",
    [
        {"pooling": "mean"},
        {"normalize": False},
        {"matryoshka_dims": [64]},
        {"embedding": True, "matryoshka_dims": []},
        {"embedding": True, "matryoshka_dims": [0]},
        {"embedding": True, "matryoshka_dims": [64, 64]},
        {"embedding": True, "pooling": "max"},
    ],
)
def test_embedding_options_are_validated(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        config(**fields)
