"""The models this process serves, found by id or alias."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType

from helixflow.config import ModelConfig
from helixflow.engine.llamacpp import LlamaCppEngine
from helixflow.errors import ModelNotFoundError

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelConfig, int], LlamaCppEngine]

# Inference backends by the name a model's `backend` setting uses; a new backend is a new
# entry here, never a branch elsewhere.
BACKENDS: Mapping[str, EngineFactory] = MappingProxyType(
    {
        "llamacpp": lambda config, retry_after_s: LlamaCppEngine(
            config, retry_after_s=retry_after_s
        ),
    }
)


class EngineRegistry:
    """Builds one engine per configured model and resolves request names to them."""

    def __init__(self, models: list[ModelConfig], *, retry_after_s: int = 1) -> None:
        self._engines: dict[str, LlamaCppEngine] = {}
        self._names: dict[str, str] = {}
        for config in models:
            self._engines[config.id] = BACKENDS[config.backend](config, retry_after_s)
            for name in config.names:
                self._names[name] = config.id

    async def start(self) -> None:
        # Models load one after the other: loading is I/O- and memory-bound.
        for engine in self._engines.values():
            await engine.start()

    async def stop(self) -> None:
        await asyncio.gather(*(engine.stop() for engine in self._engines.values()))

    def get(self, name: str) -> LlamaCppEngine:
        model_id = self._names.get(name)
        if model_id is None:
            raise ModelNotFoundError(name)
        return self._engines[model_id]

    def __iter__(self) -> Iterator[LlamaCppEngine]:
        return iter(self._engines.values())

    def __len__(self) -> int:
        return len(self._engines)

    @property
    def ready(self) -> bool:
        return all(engine.ready for engine in self._engines.values())
