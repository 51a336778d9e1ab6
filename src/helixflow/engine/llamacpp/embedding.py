"""Embeddings on llama.cpp: the asyncio face of an embedding model (implements
:class:`helixflow.engine.embedding.Embedder`).

Its own context outputs every token's final hidden state (no sampling, no llama.cpp pooling);
a decode thread (``embedding_worker``) packs inputs of concurrent requests into few
``llama_decode`` calls, one sequence id per input, and pools the vectors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from helixflow.config import ModelConfig
from helixflow.engine.base import EngineInfo, EngineStats
from helixflow.engine.embedding import Pooling, Vector
from helixflow.engine.llamacpp.embedding_worker import ROW_ALIGN, EmbedJob, EmbedWorker
from helixflow.engine.llamacpp.model import (
    FLASH_ATTENTION,
    ContextOptions,
    LlamaModel,
    default_threads,
    engine_info,
    model_file,
)
from helixflow.errors import EngineError, InvalidRequestError, ServiceUnavailableError

log = logging.getLogger(__name__)

_DECLARED_POOLING: dict[str, Pooling] = {"1": "mean", "2": "cls", "3": "last"}
"""llama.cpp's ``LLAMA_POOLING_TYPE_*`` numbers, as a GGUF's ``<arch>.pooling_type``."""


class LlamaCppEmbedder:
    """Serves one GGUF model as an embedding model (implements :class:`Embedder`)."""

    def __init__(self, config: ModelConfig, *, retry_after_s: int = 1) -> None:
        self.config = config
        self._retry_after_s = retry_after_s
        self._model: LlamaModel | None = None
        self._worker: EmbedWorker | None = None
        self._info: EngineInfo | None = None
        self._max_input = 0

    async def start(self) -> None:
        cfg = self.config
        path = await asyncio.to_thread(model_file, cfg)
        # Each sequence gets its own KV stream, large enough for the longest input.
        stream = -(-cfg.batch_size // 256) * 256
        options = ContextOptions(
            context_size=stream * cfg.parallel,
            parallel=cfg.parallel,
            batch_size=cfg.batch_size,
            threads=cfg.threads or default_threads(),
            unified_kv=False,
            flash_attention=FLASH_ATTENTION[cfg.flash_attention],
            embeddings=True,
        )
        model = await asyncio.to_thread(LlamaModel, path, options)
        too_large = [d for d in cfg.matryoshka_dims or [] if d > model.n_embd]
        if too_large:
            model.close()
            raise EngineError(
                f"model {cfg.id!r}: matryoshka_dims {too_large} exceed its size {model.n_embd}",
                code="invalid_model_config",
            )
        rows = model.n_ubatch // ROW_ALIGN * ROW_ALIGN if model.causal else model.n_ubatch
        self._max_input = min(rows, model.n_ctx_seq, model.n_ctx_train or rows)
        pooling = cfg.pooling or _declared_pooling(model)
        self._model = model
        self._info = engine_info(cfg, model, path, context_size=self._max_input, chat_template=None)
        self._worker = EmbedWorker(model, cfg, pooling, cfg.parallel)
        self._worker.start()
        log.info(
            "%s embeds %d-dimensional vectors (%s pooling, %s attention, up to %d tokens)",
            cfg.id,
            model.n_embd,
            pooling,
            "causal" if model.causal else "non-causal",
            self._max_input,
        )

    async def stop(self) -> None:
        if self._worker is not None:
            await asyncio.to_thread(self._worker.shutdown)
            self._worker = None
        if self._model is not None:
            self._model.close()
            self._model = None

    @property
    def ready(self) -> bool:
        return self._worker is not None

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise ServiceUnavailableError(f"model {self.config.id!r} is not loaded")
        return self._info

    @property
    def dimensions(self) -> int:
        return self._require_model().n_embd

    @property
    def max_input_tokens(self) -> int:
        return self._max_input

    def stats(self) -> EngineStats:
        worker = self._require_worker()
        model = self._require_model()
        return EngineStats(
            active_sequences=worker.active,
            queued_requests=worker.waiting_jobs,
            kv_cells_used=0,
            kv_cells_total=model.n_ctx,
            steps=worker.decodes,
            tokens_generated=0,
            prompt_tokens_processed=worker.tokens,
            prompt_tokens_reused=0,
        )

    def tokenize(self, text: str) -> list[int]:
        return self._require_model().tokenize(text, add_special=True, parse_special=False)

    async def embed(
        self, inputs: Sequence[Sequence[int]], *, dimensions: int | None = None
    ) -> list[Vector]:
        worker = self._require_worker()
        if not inputs:
            return []
        # Checked before queueing: a bad input in a shared decode would fail its neighbours.
        vocab = self._require_model().n_vocab
        for i, tokens in enumerate(inputs):
            if not 0 < len(tokens) <= self._max_input or min(tokens) < 0 or max(tokens) >= vocab:
                raise InvalidRequestError(
                    f"input {i} is empty, longer than {self._max_input} tokens or outside "
                    "the vocabulary"
                )
        future: asyncio.Future[list[Vector]] = asyncio.get_running_loop().create_future()
        job = EmbedJob([list(t) for t in inputs], dimensions, future)
        worker.submit(job, max_queue=self.config.max_queue, retry_after_s=self._retry_after_s)
        try:
            return await future
        finally:
            job.cancelled = True  # done or abandoned: nothing left to compute for it

    def _require_model(self) -> LlamaModel:
        if self._model is None:
            raise ServiceUnavailableError(f"model {self.config.id!r} is not loaded")
        return self._model

    def _require_worker(self) -> EmbedWorker:
        if self._worker is None:
            raise ServiceUnavailableError(f"model {self.config.id!r} is not loaded")
        return self._worker


def _declared_pooling(model: LlamaModel) -> Pooling:
    """The pooling the GGUF declares (``<arch>.pooling_type``), else mean."""
    architecture = model.metadata("general.architecture")
    declared = model.metadata(f"{architecture}.pooling_type") if architecture else None
    return _DECLARED_POOLING.get(declared or "", "mean")
