"""The local llama.cpp engine: GGUF models, continuous batching, prefix reuse."""

from helixflow.engine.llamacpp.engine import LlamaCppEngine

__all__ = ["LlamaCppEngine"]
