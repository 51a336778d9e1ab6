"""The asyncio face of a llama.cpp model: implements :class:`helixflow.engine.Engine`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import llama_cpp

from helixflow.config import ModelConfig
from helixflow.engine.base import Delta, EngineInfo, EngineStats, GenerationRequest
from helixflow.engine.chat_template import ChatTemplate, fallback_template, load_template_source
from helixflow.engine.kvstore import SessionKVStore
from helixflow.engine.llamacpp.model import (
    FLASH_ATTENTION,
    ContextOptions,
    LlamaModel,
    default_threads,
    engine_info,
    model_file,
)
from helixflow.engine.llamacpp.scheduler import Scheduler, SchedulerOptions
from helixflow.engine.llamacpp.sequence import Group
from helixflow.errors import ServiceUnavailableError

log = logging.getLogger(__name__)


class LlamaCppEngine:
    """Serves one GGUF model; generation runs on the scheduler's decode thread."""

    def __init__(self, config: ModelConfig, *, retry_after_s: int = 1) -> None:
        self.config = config
        self._retry_after_s = retry_after_s
        self._model: LlamaModel | None = None
        self._scheduler: Scheduler | None = None
        self._template: ChatTemplate | None = None
        self._info: EngineInfo | None = None
        self._kv_store: SessionKVStore | None = None
        self._state_fingerprint = ""

    def use_kv_store(self, store: SessionKVStore) -> None:
        """Save each session's KV state after a turn and restore it on the next one."""
        self._kv_store = store

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        path = await asyncio.to_thread(model_file, cfg)
        options = ContextOptions(
            context_size=cfg.context_size,
            parallel=cfg.parallel,
            batch_size=max(cfg.batch_size, cfg.parallel),
            threads=cfg.threads or default_threads(),
            unified_kv=cfg.kv_unified,
            flash_attention=FLASH_ATTENTION[cfg.flash_attention],
        )
        model = await asyncio.to_thread(LlamaModel, path, options)
        self._model = model
        source = (
            load_template_source(cfg.chat_template) if cfg.chat_template else model.chat_template()
        )
        if source is None:
            architecture = model.metadata("general.architecture")
            source = fallback_template(architecture)
            log.info(
                "%s carries no chat template; using the %s format",
                path.name,
                architecture if source != fallback_template(None) else "ChatML",
            )
        self._template = ChatTemplate(
            source,
            bos_token=model.token_text(model.bos_id) if model.bos_id >= 0 else "",
            eos_token=model.token_text(model.eos_id) if model.eos_id >= 0 else "",
        )
        self._info = engine_info(
            cfg, model, path, context_size=model.n_ctx_seq, chat_template=source
        )
        # A saved state is only loaded into the same model file and llama.cpp build.
        self._state_fingerprint = f"{model.fingerprint}:{llama_cpp.__version__}"
        self._scheduler = Scheduler(
            model,
            SchedulerOptions(
                model_id=cfg.id,
                parallel=cfg.parallel,
                batch_size=options.batch_size,
                prefill_chunk=cfg.prefill_chunk,
                max_queue=cfg.max_queue,
                prefix_cache=cfg.prefix_cache,
                retry_after_s=self._retry_after_s,
                save_min_tokens=self._kv_store.config.min_tokens if self._kv_store else 0,
            ),
            asyncio.get_running_loop(),
            save_state=self._save_state if self._kv_store is not None else None,
        )
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.shutdown)
            self._scheduler = None
        if self._model is not None:
            self._model.close()
            self._model = None

    # -- introspection -------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._scheduler is not None

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise ServiceUnavailableError(f"model {self.config.id!r} is not loaded")
        return self._info

    def stats(self) -> EngineStats:
        return self._require_scheduler().stats()

    def _require_model(self) -> LlamaModel:
        if self._model is None:
            raise ServiceUnavailableError(f"model {self.config.id!r} is not loaded")
        return self._model

    def _require_scheduler(self) -> Scheduler:
        if self._scheduler is None:
            raise ServiceUnavailableError(f"model {self.config.id!r} is not loaded")
        return self._scheduler

    # -- text ----------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self._require_model().tokenize(text, add_special=add_special, parse_special=False)

    def detokenize(self, tokens: Sequence[int]) -> str:
        model = self._require_model()
        return b"".join(model.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        model = self._require_model()
        assert self._template is not None
        text = self._template.render(
            messages, tools=tools, add_generation_prompt=add_generation_prompt
        )
        bos = self._template.bos_token
        add_bos = model.add_bos and not (bos and text.startswith(bos))
        tokens = model.tokenize(text, add_special=False, parse_special=True)
        if add_bos and model.bos_id >= 0:
            tokens.insert(0, model.bos_id)
        return tokens

    # -- sessions ------------------------------------------------------------------------------
    async def attach_session(self, request: GenerationRequest) -> None:
        """Find the saved KV state of ``request.session_id`` (RAM, disk or S3) and attach it,
        so the scheduler loads it instead of recomputing the prefix it covers."""
        store = self._kv_store
        if store is None or request.session_id is None or request.prompt_logprobs is not None:
            return
        request.restore = await store.load(
            self.config.id, self._state_fingerprint, request.session_id, request.prompt_tokens
        )

    def _save_state(self, request: GenerationRequest, tokens: list[int], state: bytes) -> None:
        if self._kv_store is not None and request.session_id is not None:
            self._kv_store.save_later(
                self.config.id, self._state_fingerprint, request.session_id, tokens, state
            )

    # -- generation ----------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Queue ``request`` now (raising :class:`QueueFullError` at once when full) and return
        its stream of deltas. Closing the stream early frees the request's sequences."""
        scheduler = self._require_scheduler()
        sink: asyncio.Queue[list[Delta] | BaseException] = asyncio.Queue()
        group = Group(request=request, sink=sink)
        scheduler.submit(group)
        return GenerationStream(scheduler, group)


class GenerationStream:
    """The deltas of one submitted request. ``aclose()`` (or garbage collection of an
    unfinished stream) cancels whatever is still generating."""

    def __init__(self, scheduler: Scheduler, group: Group) -> None:
        self._scheduler = scheduler
        self._group = group
        self._remaining = group.request.n
        self._buffer: list[Delta] = []
        self._started = time.monotonic()

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> Delta:
        while not self._buffer:
            if self._remaining <= 0:
                raise StopAsyncIteration
            item = await self._group.sink.get()
            if isinstance(item, BaseException):
                self._remaining = 0
                raise item
            self._buffer = item
            self._buffer.reverse()
        delta = self._buffer.pop()
        if delta.finish_reason is not None:
            self._remaining -= 1
        return delta

    async def aclose(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        if self._abandon():
            log.info(
                "request %s cancelled by the client after %.2fs",
                self._group.request_id,
                time.monotonic() - self._started,
            )

    def __del__(self) -> None:
        self._abandon()

    def _abandon(self) -> bool:
        """Stop whatever is still generating; True if anything was."""
        if self._remaining <= 0:
            return False
        self._remaining = 0
        self._group.cancelled = True
        self._scheduler.cancel(self._group.request_id)
        return True
