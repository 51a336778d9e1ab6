"""The engine protocol: what the API layer may ask of any inference backend.

An engine serves one model. It tokenizes, renders chat templates and streams generated text as
``Delta`` objects; it knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-sequence sampling settings. ``temperature == 0`` means greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    """None: no logprobs. 0..20: the sampled token's logprob plus this many alternatives."""
    ignore_eos: bool = False
    grammar: str | None = None
    """GBNF text (llama.cpp's grammar language). Every sampled token keeps the output a prefix
    of a match of ``grammar_root``; once the match is complete only end-of-generation can
    follow, so generation stops there (even with ``ignore_eos``)."""
    grammar_root: str = "root"

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(slots=True)
class GenerationRequest:
    request_id: str
    prompt_tokens: list[int]
    sampling: SamplingParams
    n: int = 1
    prompt_logprobs: int | None = None
    """When set, also score every prompt token (needed for legacy ``echo`` + ``logprobs``)."""
    session_id: str | None = None
    """A conversation key: the engine may save this request's KV state under it after the
    reply and restore it for the next turn (see ``engine/kvstore.py``)."""
    restore: KVRestore | None = None
    """Saved KV state of an earlier turn, to load instead of recomputing its prefix."""


@dataclass(frozen=True, slots=True)
class KVRestore:
    """A sequence's saved KV state: the tokens it holds and the backend's opaque bytes."""

    tokens: tuple[int, ...]
    state: bytes
    tier: str
    """Where it was found: ``ram``, ``disk`` or ``s3``."""


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    token_bytes: bytes
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    token: str
    token_bytes: bytes
    logprob: float | None
    top: tuple[TopLogprob, ...] = ()


@dataclass(slots=True)
class Delta:
    """Part of one choice's output. Exactly one delta per choice carries ``finish_reason``."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0
    """Tokens generated for this choice so far (set on the final delta)."""
    cached_tokens: int = 0
    """Prompt tokens whose KV was reused instead of computed (set on the final delta)."""


@dataclass(frozen=True, slots=True)
class EngineInfo:
    model_id: str
    context_size: int
    train_context_size: int
    parallel: int
    vocab_size: int
    fingerprint: str
    description: str
    file_path: str
    chat_template: str | None
    created: int


@dataclass(frozen=True, slots=True)
class EngineStats:
    active_sequences: int
    queued_requests: int
    kv_cells_used: int
    kv_cells_total: int
    steps: int
    tokens_generated: int
    prompt_tokens_processed: int
    prompt_tokens_reused: int
    sequence_moves: int = 0
    """Sequences moved to a lower slot to keep busy slots consecutive."""
    kv_restores: int = 0
    """Prompts that started from a saved session state."""
    kv_restored_tokens: int = 0
    kv_restore_failures: int = 0


class GenerationStream(Protocol):
    """The deltas of one submitted request; ``cancel``/``aclose`` stop it early."""

    def __aiter__(self) -> AsyncIterator[Delta]: ...

    async def __anext__(self) -> Delta: ...

    async def aclose(self) -> None: ...

    def cancel(self) -> None: ...


@runtime_checkable
class Engine(Protocol):
    """What an inference backend offers to the API layer."""

    @property
    def info(self) -> EngineInfo: ...

    def stats(self) -> EngineStats: ...

    @property
    def ready(self) -> bool: ...

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]: ...

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Queue the request now (raising when the engine is full); stream its deltas."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
