"""POST /v1/embeddings through the official client and raw HTTP, against the real server."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import llama_cpp
import numpy as np
import openai
import pytest

from helixflow.engine.bundled import resolve_bundled
from tests.conftest import EMBEDDING_MODEL

N_EMBD = 576  # SmolLM2-135M
MAX_INPUT_TOKENS = 512  # the embedding model's batch_size
TEXTS = [
    "The cat sat on the mat.",
    "Stock markets fell sharply on Tuesday after the central bank raised rates.",
    "Hi",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. " * 2,
    "¿Dónde está la biblioteca?",
    "The cat sat on the mat!",
]


@pytest.fixture(scope="module")
def vocab() -> llama_cpp.Llama:
    """The model's tokenizer, to send the same input as token ids."""
    return llama_cpp.Llama(str(resolve_bundled("smollm2-135m")), vocab_only=True, verbose=False)


def tokens(vocab: llama_cpp.Llama, text: str) -> list[int]:
    return list(vocab.tokenize(text.encode(), add_bos=True, special=False))


def vectors(response: Any) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float32)


def embed(client: openai.OpenAI, inputs: Any, **kw: Any) -> Any:
    return client.embeddings.create(model=EMBEDDING_MODEL, input=inputs, **kw)


# -- replies ---------------------------------------------------------------------------------------
def test_one_vector_per_input_in_order_with_usage(
    client: openai.OpenAI, vocab: llama_cpp.Llama
) -> None:
    response = embed(client, TEXTS, encoding_format="float")
    assert response.object == "list"
    assert response.model == EMBEDDING_MODEL
    assert [item.index for item in response.data] == list(range(len(TEXTS)))
    assert all(item.object == "embedding" for item in response.data)
    matrix = vectors(response)
    assert matrix.shape == (len(TEXTS), N_EMBD)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    expected_tokens = sum(len(tokens(vocab, text)) for text in TEXTS)
    assert response.usage.prompt_tokens == expected_tokens
    assert response.usage.total_tokens == expected_tokens
    # the two near-identical sentences are each other's nearest neighbours
    sims = matrix @ matrix.T
    np.fill_diagonal(sims, -1)
    assert int(np.argmax(sims[0])) == 5


def test_a_single_string(client: openai.OpenAI) -> None:
    response = embed(client, "Just one.")
    assert len(response.data) == 1
    assert len(response.data[0].embedding) == N_EMBD


def test_base64_is_the_float32_bytes_of_the_float_reply(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    floats = vectors(embed(client, TEXTS, encoding_format="float"))
    raw = http.post(
        "/v1/embeddings",
        json={"model": EMBEDDING_MODEL, "input": TEXTS, "encoding_format": "base64"},
    )
    assert raw.status_code == 200, raw.text
    data = raw.json()["data"]
    assert all(isinstance(item["embedding"], str) for item in data)
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
    np.testing.assert_array_equal(decoded, floats)
    # the client asks for base64 by default and decodes it itself
    np.testing.assert_array_equal(vectors(embed(client, TEXTS)), floats)
    # asked for explicitly, the client hands the base64 text back as it came
    explicit = embed(client, TEXTS[:1], encoding_format="base64").data[0].embedding
    assert isinstance(explicit, str)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(explicit), "<f4"), floats[0])


def test_a_batch_equals_single_requests(client: openai.OpenAI) -> None:
    batched = vectors(embed(client, TEXTS, encoding_format="float"))
    for text, vector in zip(TEXTS, batched, strict=True):
        single = vectors(embed(client, text, encoding_format="float"))[0]
        np.testing.assert_allclose(vector, single, rtol=0, atol=1e-5)
    # and concurrent requests, which the engine batches into shared decodes
    with ThreadPoolExecutor(len(TEXTS)) as pool:
        replies = list(pool.map(lambda t: embed(client, [t], encoding_format="float"), TEXTS))
    for reply, vector in zip(replies, batched, strict=True):
        np.testing.assert_allclose(vectors(reply)[0], vector, rtol=0, atol=1e-5)


def test_token_arrays_equal_their_text(client: openai.OpenAI, vocab: llama_cpp.Llama) -> None:
    by_text = vectors(embed(client, TEXTS[:3], encoding_format="float"))
    ids = [tokens(vocab, text) for text in TEXTS[:3]]
    by_tokens = embed(client, ids, encoding_format="float")
    np.testing.assert_array_equal(vectors(by_tokens), by_text)
    assert by_tokens.usage.prompt_tokens == sum(map(len, ids))
    lone = embed(client, ids[0], encoding_format="float")  # one token array is one input
    np.testing.assert_array_equal(vectors(lone), by_text[:1])


def test_matryoshka_dimensions(client: openai.OpenAI) -> None:
    full = vectors(embed(client, TEXTS[:2], encoding_format="float"))
    for size in (64, 256):
        cut = vectors(embed(client, TEXTS[:2], encoding_format="float", dimensions=size))
        assert cut.shape == (2, size)
        expected = full[:, :size] / np.linalg.norm(full[:, :size], axis=1, keepdims=True)
        np.testing.assert_allclose(cut, expected, atol=1e-6)
    same = vectors(embed(client, TEXTS[:2], encoding_format="float", dimensions=N_EMBD))
    np.testing.assert_array_equal(same, full)


def test_the_model_is_listed(http: httpx.Client) -> None:
    ids = [card["id"] for card in http.get("/v1/models").json()["data"]]
    assert EMBEDDING_MODEL in ids
    card = http.get(f"/v1/models/{EMBEDDING_MODEL}").json()
    assert card["context_window"] == MAX_INPUT_TOKENS


# -- errors ----------------------------------------------------------------------------------------
def body(**fields: Any) -> dict[str, Any]:
    return {"model": EMBEDDING_MODEL, "input": TEXTS[:2], **fields}


BAD_REQUESTS = [
    pytest.param(body(input=[]), 400, "input", None, id="empty-list"),
    pytest.param(body(input=""), 400, "input", None, id="empty-string"),
    pytest.param(body(input=["fine", ""]), 400, "input[1]", None, id="empty-string-in-list"),
    pytest.param(body(input=[[1, 2], []]), 400, "input[1]", None, id="empty-token-array"),
    pytest.param(body(input=["x"] * 2049), 400, "input", None, id="too-many-inputs"),
    pytest.param(body(input=["fine", 3]), 400, "input[1]", None, id="mixed-list"),
    pytest.param(body(input=[{"text": "x"}]), 400, "input[0]", None, id="object-input"),
    pytest.param(body(input=None), 400, "input", None, id="null-input"),
    pytest.param({"model": EMBEDDING_MODEL}, 400, "input", "missing", id="missing-input"),
    pytest.param(
        body(input=["fine", "word " * 700]),
        400,
        "input[1]",
        "context_length_exceeded",
        id="too-long-in-list",
    ),
    pytest.param(
        body(input="word " * 700), 400, "input", "context_length_exceeded", id="too-long-alone"
    ),
    pytest.param(
        body(input=[[1] * (MAX_INPUT_TOKENS + 1)]),
        400,
        "input[0]",
        "context_length_exceeded",
        id="too-many-tokens",
    ),
    pytest.param(
        body(input=[[1, 2], [3, 10**9]]), 400, "input[1]", "invalid_token", id="token-too-big"
    ),
    pytest.param(body(input=[-1, 2]), 400, "input", "invalid_token", id="negative-token"),
    pytest.param(body(encoding_format="hex"), 400, "encoding_format", None, id="bad-format"),
    pytest.param(
        body(dimensions=100), 400, "dimensions", "unsupported_dimensions", id="dimensions-100"
    ),
    pytest.param(body(dimensions=0), 400, "dimensions", None, id="dimensions-0"),
    pytest.param(
        body(dimensions=1024), 400, "dimensions", "unsupported_dimensions", id="dimensions-big"
    ),
    pytest.param(
        body(model="smollm2-135m"), 400, "model", "wrong_model_type", id="generation-model"
    ),
    pytest.param(body(model="nope"), 404, "model", "model_not_found", id="unknown-model"),
]


def assert_envelope(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert error["message"]
    return dict(error)


@pytest.mark.parametrize(("payload", "status", "param", "code"), BAD_REQUESTS)
def test_bad_request(
    http: httpx.Client, payload: dict[str, Any], status: int, param: str, code: str | None
) -> None:
    error = assert_envelope(http.post("/v1/embeddings", json=payload), status, param)
    if code is not None:
        assert error["code"] == code, error


def test_over_long_input_names_its_index_and_the_limit(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", json=body(input=["a", "b", "word " * 700]))
    error = assert_envelope(response, 400, "input[2]")
    assert str(MAX_INPUT_TOKENS) in error["message"]
    assert "input[2]" in error["message"]


def test_lone_surrogate(http: httpx.Client) -> None:
    raw = b'{"model": "%s", "input": ["fine", "x\\ud83d"]}' % EMBEDDING_MODEL.encode()
    response = http.post(
        "/v1/embeddings", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_envelope(response, 400, "input[1]")


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/v1/completions", {"prompt": "Hi"}),
    ],
)
def test_the_embedding_model_does_not_generate(
    http: httpx.Client, path: str, payload: dict[str, Any]
) -> None:
    response = http.post(path, json={"model": EMBEDDING_MODEL, "max_tokens": 4, **payload})
    error = assert_envelope(response, 400, "model")
    assert error["code"] == "wrong_model_type"
    assert EMBEDDING_MODEL in error["message"]


def test_the_client_raises_for_a_generation_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="smollm2-135m", input="hello")
    assert "smollm2-135m" in str(info.value)


def test_server_stayed_healthy(http: httpx.Client, client: openai.OpenAI) -> None:
    ready = http.get("/ready")
    assert ready.status_code == 200
    entry = next(m for m in ready.json()["models"] if m["id"] == EMBEDDING_MODEL)
    assert entry["loaded"] is True
    assert entry["queued_requests"] == 0
    assert len(embed(client, "still here").data) == 1
