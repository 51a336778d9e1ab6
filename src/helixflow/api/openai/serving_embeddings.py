"""Embeddings: inputs -> tokens (checked against the model) -> vectors -> OpenAI's list object."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from helixflow.api.openai.protocol_embeddings import EmbeddingRequest
from helixflow.engine.embedding import Embedder, Vector, check_dimensions
from helixflow.engine.registry import EngineRegistry
from helixflow.errors import ContextLengthExceededError, InvalidRequestError


@dataclass(slots=True)
class PreparedEmbedding:
    """A validated embeddings request, ready to run."""

    request: EmbeddingRequest
    embedder: Embedder
    inputs: list[list[int]]
    dimensions: int | None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(tokens) for tokens in self.inputs)


class EmbeddingService:
    def __init__(self, engines: EngineRegistry) -> None:
        self._engines = engines

    def prepare(self, request: EmbeddingRequest) -> PreparedEmbedding:
        embedder = self._engines.get_embedder(request.model)
        dimensions = check_dimensions(embedder.config, embedder.dimensions, request.dimensions)
        inputs = [
            self._tokens(embedder, item, request.param_of(i))
            for i, item in enumerate(request.inputs)
        ]
        return PreparedEmbedding(request, embedder, inputs, dimensions)

    @staticmethod
    def _tokens(embedder: Embedder, item: str | list[int], param: str) -> list[int]:
        limit = embedder.max_input_tokens
        if isinstance(item, str):
            tokens = embedder.tokenize(item)
        else:
            vocab = embedder.info.vocab_size
            bad = next((t for t in item if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequestError(
                    f"{param} holds token {bad}, outside this model's vocabulary (0..{vocab - 1})",
                    param=param,
                    code="invalid_token",
                )
            tokens = item
        if not tokens:
            raise InvalidRequestError(f"{param} has no tokens", param=param)
        if len(tokens) > limit:
            raise ContextLengthExceededError(
                f"This model's maximum input length is {limit} tokens. However, {param} "
                f"resulted in {len(tokens)} tokens. Please reduce the length of the input.",
                param=param,
            )
        return tokens

    async def embed(self, prepared: PreparedEmbedding) -> bytes:
        """The JSON reply: OpenAI's list of embedding objects, in input order."""
        vectors = await prepared.embedder.embed(prepared.inputs, dimensions=prepared.dimensions)
        as_base64 = prepared.request.encoding_format == "base64"
        body: dict[str, Any] = {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": _base64(vector) if as_base64 else vector,
                }
                for index, vector in enumerate(vectors)
            ],
            "model": prepared.request.model,
            "usage": {
                "prompt_tokens": prepared.prompt_tokens,
                "total_tokens": prepared.prompt_tokens,
            },
        }
        # orjson writes float32 arrays with the shortest text that reads back to the same float32.
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _base64(vector: Vector) -> str:
    return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
