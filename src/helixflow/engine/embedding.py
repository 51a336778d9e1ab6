"""The embedding protocol: what the API layer may ask of an embedding model, and the vector
arithmetic every backend shares (pooling, Matryoshka truncation, normalization).

An embedder serves one model. It tokenizes text and turns token sequences into one vector
each; it knows nothing of HTTP or of how the vectors are encoded for a client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from helixflow.config import ModelConfig
from helixflow.engine.base import EngineInfo, EngineStats
from helixflow.errors import InvalidRequestError

Pooling = Literal["mean", "cls", "last"]
Vector = npt.NDArray[np.float32]
"""One embedding: float32, the model's size (or the requested ``dimensions``)."""


def pool(states: npt.NDArray[np.float32], how: Pooling) -> npt.NDArray[np.float64]:
    """One vector from the final hidden states of one input's tokens (one row per token)."""
    if how == "cls":
        row = states[0]
    elif how == "last":
        row = states[-1]
    else:
        row = states.mean(axis=0, dtype=np.float64)
    return np.asarray(row, dtype=np.float64)


def finish(pooled: npt.NDArray[np.float64], *, dimensions: int | None, normalize: bool) -> Vector:
    """Cut a Matryoshka vector to ``dimensions`` first, then scale it to unit length."""
    vector = pooled[:dimensions] if dimensions is not None else pooled
    if normalize:
        norm = float(np.linalg.norm(vector))
        if norm > 0.0:
            vector = vector / norm
    return vector.astype(np.float32)


def check_dimensions(config: ModelConfig, native: int, requested: int | None) -> int | None:
    """The size to cut vectors to (None: the model's own), or a 400 naming `dimensions`."""
    if requested is None or requested == native:
        return None
    allowed = [d for d in config.matryoshka_dims or [] if d <= native]
    if not allowed:
        raise InvalidRequestError(
            f"Model '{config.id}' does not support `dimensions` other than its own size "
            f"({native}).",
            param="dimensions",
            code="unsupported_dimensions",
        )
    if requested not in allowed:
        sizes = ", ".join(str(d) for d in [*allowed, native])
        raise InvalidRequestError(
            f"Model '{config.id}' supports `dimensions` of {sizes}; got {requested}.",
            param="dimensions",
            code="unsupported_dimensions",
        )
    return requested


@runtime_checkable
class Embedder(Protocol):
    """What an embedding backend offers to the API layer."""

    config: ModelConfig

    @property
    def info(self) -> EngineInfo: ...

    @property
    def dimensions(self) -> int:
        """The size of the model's own vectors."""
        ...

    @property
    def max_input_tokens(self) -> int:
        """The most tokens one input may have."""
        ...

    @property
    def ready(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    def tokenize(self, text: str) -> list[int]:
        """Tokens of one input, with the special tokens the model adds (BOS, CLS/SEP...)."""
        ...

    async def embed(
        self, inputs: Sequence[Sequence[int]], *, dimensions: int | None = None
    ) -> list[Vector]:
        """One vector per input, in order; pooled, cut to ``dimensions`` and normalized as
        the model is configured. Raises :class:`QueueFullError` at once when full."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
