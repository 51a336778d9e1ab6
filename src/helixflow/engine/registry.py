"""The models this process serves, found by id or alias."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from helixflow.config import ModelConfig
from helixflow.engine.llamacpp import LlamaCppEngine
from helixflow.errors import ModelNotFoundError

log = logging.getLogger(__name__)


class EngineRegistry:
    """Builds one engine per configured model and resolves request names to them."""

    def __init__(self, models: list[ModelConfig], *, retry_after_s: int = 1) -> None:
        self._engines: dict[str, LlamaCppEngine] = {}
        self._names: dict[str, str] = {}
        for config in models:
            self._engines[config.id] = LlamaCppEngine(config, retry_after_s=retry_after_s)
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
