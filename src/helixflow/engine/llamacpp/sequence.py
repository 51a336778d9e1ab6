"""Scheduler bookkeeping: KV slots, live sequences and the request groups they belong to."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum

from helixflow.engine.base import Delta, GenerationRequest
from helixflow.engine.llamacpp.sampling import SamplerChain
from helixflow.engine.text import StopMatcher, Utf8Stream


class Phase(Enum):
    WAITING_PARENT = "waiting_parent"  # an n>1 sibling waiting for the shared prompt's KV
    RUNNING = "running"
    PREEMPTED = "preempted"  # its KV was dropped for room; recomputed when room returns
    FINISHED = "finished"


@dataclass(slots=True)
class Slot:
    """One llama.cpp sequence id and the tokens whose KV it currently holds."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    owner: Sequence | None = None
    last_used: int = 0


@dataclass(slots=True, eq=False)
class Group:
    """One generation request: ``n`` sequences sharing a prompt, and where their output goes."""

    request: GenerationRequest
    sink: asyncio.Queue[list[Delta] | BaseException]
    sequences: list[Sequence] = field(default_factory=list)
    cancelled: bool = False

    @property
    def request_id(self) -> str:
        return self.request.request_id


@dataclass(slots=True, eq=False)
class Sequence:
    """One choice being generated: its tokens, how many are in the KV cache, and its output."""

    group: Group
    index: int
    slot: Slot
    tokens: list[int]
    """Prompt and generated tokens; the last generated one is not in the KV cache yet."""
    max_tokens: int
    sampler: SamplerChain
    phase: Phase = Phase.RUNNING
    n_past: int = 0
    """How many of ``tokens`` have their KV in the slot."""
    generated: int = 0
    cached_tokens: int = 0
    admitted: int = 0
    parent: Sequence | None = None
    prompt_logprobs_done: bool = False
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    stop: StopMatcher = field(default_factory=lambda: StopMatcher(()))

    @property
    def pending(self) -> int:
        """Tokens still to be fed before the next sample."""
        return len(self.tokens) - self.n_past

    @property
    def seq_id(self) -> int:
        return self.slot.seq_id
