"""The decode thread of a llama.cpp embedding model: pending inputs -> planned batches ->
one ``llama_decode`` each -> pooled vectors handed back to the event loop.

Batching never changes a vector. llama.cpp's arithmetic for a token depends on where its row
sits in the micro-batch and its cells in the KV cache (SIMD lanes, and matrix kernels that take
rows in groups, e.g. the repacked Q4_K ones), and quantized activations turn a last-bit
difference into a visible one. So every input gets the same layout alone or in a batch: its own
KV stream (the context has per-sequence streams, so it starts at cell 0), and rows padded at its
end to a multiple of ``ROW_ALIGN`` and to the batch's longest input. With causal attention the
real tokens never see that padding; models with non-causal attention (BERT-style encoders)
would, so they are embedded one input per decode. (With ``flash_attention: on`` llama.cpp picks
its CPU kernel by batch size, and this guarantee is lost.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from helixflow.config import ModelConfig
from helixflow.engine.embedding import Pooling, Vector, finish, pool
from helixflow.engine.llamacpp.model import LlamaModel
from helixflow.errors import EngineError, HelixFlowError, QueueFullError

log = logging.getLogger(__name__)

ROW_ALIGN = 8
"""Every input is padded to a multiple of this many rows (see the module docstring)."""
_LOOKAHEAD = 1024
"""Pending inputs considered when filling a batch around the oldest one."""


def padded(n_tokens: int) -> int:
    return -(-n_tokens // ROW_ALIGN) * ROW_ALIGN


@dataclass(slots=True, eq=False)
class EmbedJob:
    """One request: its inputs and the future its vectors go to."""

    inputs: list[list[int]]
    dimensions: int | None
    future: asyncio.Future[list[Vector]]
    results: list[Vector | None] = field(init=False)
    remaining: int = field(init=False)
    started: bool = False
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.inputs)
        self.remaining = len(self.inputs)


@dataclass(slots=True, frozen=True)
class _Item:
    job: EmbedJob
    index: int

    @property
    def tokens(self) -> list[int]:
        return self.job.inputs[self.index]


def plan_batch(lengths: Sequence[int], *, max_seqs: int, max_rows: int) -> list[int]:
    """Which pending inputs (by their lengths, oldest first) go into the next decode: the
    oldest, then those closest to it in padded length while ``n * longest <= max_rows``."""
    anchor = padded(lengths[0])
    others = sorted(range(1, len(lengths)), key=lambda i: abs(padded(lengths[i]) - anchor))
    chosen, longest = [0], anchor
    for i in others:
        if len(chosen) >= max_seqs:
            break
        rows = max(longest, padded(lengths[i]))
        if (len(chosen) + 1) * rows <= max_rows:
            chosen.append(i)
            longest = rows
    return chosen


class EmbedWorker:
    """The decode thread: takes batches from the pending inputs, decodes, pools, delivers."""

    def __init__(
        self, model: LlamaModel, config: ModelConfig, pooling: Pooling, max_seqs: int
    ) -> None:
        self._model = model
        self._config = config
        self._pooling = pooling
        self._max_seqs = max_seqs
        self._pad = model.eos_id if model.eos_id >= 0 else 0
        self._batch = llama_cpp.llama_batch_init(model.n_ubatch, 0, 1)
        self._pending: collections.deque[_Item] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._waiting_jobs = 0
        self.active = 0
        self.decodes = 0
        self.tokens = 0
        self._thread = threading.Thread(target=self._run, name=f"embed-{config.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        llama_cpp.llama_batch_free(self._batch)

    @property
    def waiting_jobs(self) -> int:
        return self._waiting_jobs

    def submit(self, job: EmbedJob, *, max_queue: int, retry_after_s: int) -> None:
        """Queue a request's inputs; past ``max_queue`` requests waiting (beyond the one that
        may always wait for the next decode) raise :class:`QueueFullError`."""
        with self._lock:
            if self._waiting_jobs > max_queue:
                raise QueueFullError(self._config.id, self._waiting_jobs, retry_after=retry_after_s)
            self._waiting_jobs += 1
            self._pending.extend(_Item(job, i) for i in range(len(job.inputs)))
        self._wake.set()

    # -- the decode thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            items = self._take()
            if not items:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self.active = len(items)
            try:
                self._deliver(items, self._decode([item.tokens for item in items]))
            except Exception as exc:  # never let the thread die: fail what was running
                log.exception("embedding decode failed on %s", self._config.id)
                error = exc if isinstance(exc, HelixFlowError) else EngineError(str(exc))
                self._fail({item.job for item in items}, error)
            self.active = 0
        with self._lock:
            jobs = {item.job for item in self._pending}
            self._pending.clear()
        self._fail(jobs, EngineError("the engine is shutting down", code="engine_stopped"))

    def _take(self) -> list[_Item]:
        with self._lock:
            window: list[_Item] = []
            while self._pending and len(window) < _LOOKAHEAD:
                item = self._pending.popleft()
                if item.job.cancelled:
                    self._started(item.job)
                else:
                    window.append(item)
            if not window:
                return []
            chosen = plan_batch(
                [len(item.tokens) for item in window],
                max_seqs=self._max_seqs if self._model.causal else 1,
                max_rows=self._model.n_ubatch,
            )
            items = [window[i] for i in chosen]
            picked = set(chosen)
            self._pending.extendleft(
                reversed([item for i, item in enumerate(window) if i not in picked])
            )
            for item in items:
                self._started(item.job)
        return items

    def _started(self, job: EmbedJob) -> None:
        """``job`` no longer waits (called with the lock held)."""
        if not job.started:
            job.started = True
            self._waiting_jobs -= 1

    def _decode(self, inputs: list[list[int]]) -> list[np.ndarray]:
        """Token states of each input (rows of its real tokens), from one ``llama_decode``."""
        model, batch = self._model, self._batch
        rows = max(padded(len(t)) for t in inputs) if model.causal else len(inputs[0])
        n = 0
        for seq_id, tokens in enumerate(inputs):
            for pos in range(rows):
                batch.token[n] = tokens[pos] if pos < len(tokens) else self._pad
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = True
                n += 1
        batch.n_tokens = n
        try:
            rc = llama_cpp.llama_decode(model.ctx, batch)
            if rc != 0:
                raise EngineError(f"llama_decode returned {rc}")
            out = llama_cpp.llama_get_embeddings(model.ctx)
            if not out:
                raise EngineError("llama.cpp returned no embeddings")
            states = np.ctypeslib.as_array(out, shape=(n, model.n_embd))
            per_input = [
                states[i * rows : i * rows + len(tokens)].copy() for i, tokens in enumerate(inputs)
            ]
        finally:
            if model.memory:
                llama_cpp.llama_memory_clear(model.memory, False)
        self.decodes += 1
        self.tokens += sum(map(len, inputs))
        return per_input

    def _deliver(self, items: list[_Item], states: list[np.ndarray]) -> None:
        done: list[EmbedJob] = []
        for item, rows in zip(items, states, strict=True):
            job = item.job
            if job.cancelled:
                continue
            job.results[item.index] = finish(
                pool(rows, self._pooling),
                dimensions=job.dimensions,
                normalize=self._config.normalize,
            )
            job.remaining -= 1
            if job.remaining == 0:
                done.append(job)
        for job in done:
            _post(job.future, [v for v in job.results if v is not None])

    def _fail(self, jobs: set[EmbedJob], error: BaseException) -> None:
        for job in jobs:
            job.cancelled = True
            _post(job.future, error)


def _post(future: asyncio.Future[list[Vector]], outcome: list[Vector] | BaseException) -> None:
    """Hand ``outcome`` to the event loop that awaits ``future`` (from the decode thread)."""
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        future.get_loop().call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[list[Vector]], outcome: list[Vector] | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
