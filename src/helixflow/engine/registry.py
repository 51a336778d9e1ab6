"""The models this process serves, found by id or alias; each endpoint asks for its kind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Protocol

from helixflow.config import ModelConfig
from helixflow.engine.base import EngineInfo, EngineStats
from helixflow.engine.embedding import Embedder
from helixflow.engine.llamacpp import LlamaCppEngine
from helixflow.engine.llamacpp.embedding import LlamaCppEmbedder
from helixflow.errors import InvalidRequestError, ModelNotFoundError

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelConfig, int], LlamaCppEngine]
EmbedderFactory = Callable[[ModelConfig, int], Embedder]

# Inference backends by the name a model's `backend` setting uses; a new backend is a new
# entry here, never a branch elsewhere.
BACKENDS: Mapping[str, EngineFactory] = MappingProxyType(
    {
        "llamacpp": lambda config, retry_after_s: LlamaCppEngine(
            config, retry_after_s=retry_after_s
        ),
    }
)
EMBEDDING_BACKENDS: Mapping[str, EmbedderFactory] = MappingProxyType(
    {
        "llamacpp": lambda config, retry_after_s: LlamaCppEmbedder(
            config, retry_after_s=retry_after_s
        ),
    }
)


class ServedModel(Protocol):
    """What every served model offers, whatever its kind: enough to list it and report it."""

    config: ModelConfig

    @property
    def ready(self) -> bool: ...

    @property
    def info(self) -> EngineInfo: ...

    def stats(self) -> EngineStats: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class EngineRegistry:
    """Builds one engine (or embedder) per configured model and resolves request names to
    them: :meth:`get` for generation, :meth:`get_embedder` for embeddings."""

    def __init__(self, models: list[ModelConfig], *, retry_after_s: int = 1) -> None:
        self._engines: dict[str, LlamaCppEngine] = {}
        self._embedders: dict[str, Embedder] = {}
        self._served: dict[str, ServedModel] = {}
        self._names: dict[str, str] = {}
        for config in models:
            served: ServedModel
            if config.embedding:
                served = self._embedders[config.id] = EMBEDDING_BACKENDS[config.backend](
                    config, retry_after_s
                )
            else:
                served = self._engines[config.id] = BACKENDS[config.backend](config, retry_after_s)
            self._served[config.id] = served
            for name in config.names:
                self._names[name] = config.id

    async def start(self) -> None:
        # Models load one after the other: loading is I/O- and memory-bound.
        for served in self._served.values():
            await served.start()

    async def stop(self) -> None:
        await asyncio.gather(*(served.stop() for served in self._served.values()))

    def lookup(self, name: str) -> ServedModel:
        """The model called ``name``, of any kind (404 when there is none)."""
        model_id = self._names.get(name)
        if model_id is None:
            raise ModelNotFoundError(name)
        return self._served[model_id]

    def get(self, name: str) -> LlamaCppEngine:
        """The generation engine called ``name``: 404 when unknown, 400 for an embedding
        model."""
        model_id = self.lookup(name).config.id
        engine = self._engines.get(model_id)
        if engine is None:
            raise InvalidRequestError(
                f"The model '{name}' is an embedding model: use it with /v1/embeddings, "
                "not for chat or text completions.",
                param="model",
                code="wrong_model_type",
            )
        return engine

    def get_embedder(self, name: str) -> Embedder:
        """The embedding model called ``name``: 404 when unknown, 400 for a generation
        model."""
        model_id = self.lookup(name).config.id
        embedder = self._embedders.get(model_id)
        if embedder is None:
            raise InvalidRequestError(
                f"The model '{name}' does not create embeddings: it serves chat and text "
                "completions. Use a model configured with `embedding: true`.",
                param="model",
                code="wrong_model_type",
            )
        return embedder

    def __iter__(self) -> Iterator[ServedModel]:
        """Every served model, generation and embedding alike, in configuration order."""
        return iter(self._served.values())

    def __len__(self) -> int:
        return len(self._served)

    @property
    def ready(self) -> bool:
        return all(served.ready for served in self._served.values())
