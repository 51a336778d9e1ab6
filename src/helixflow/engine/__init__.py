"""Inference engines: local generation behind one small protocol."""

from helixflow.engine.base import (
    Delta,
    Engine,
    EngineInfo,
    EngineStats,
    GenerationRequest,
    GenerationStream,
    SamplingParams,
    TokenLogprob,
)

__all__ = [
    "Delta",
    "Engine",
    "EngineInfo",
    "EngineStats",
    "GenerationRequest",
    "GenerationStream",
    "SamplingParams",
    "TokenLogprob",
]
