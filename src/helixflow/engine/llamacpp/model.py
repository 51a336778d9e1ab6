"""A loaded GGUF model and its llama.cpp context: loading, vocabulary and metadata.

Everything here is a thin, typed layer over llama-cpp-python's low-level ``llama_cpp``
bindings. Nothing here is thread-safe by itself: after loading, the context belongs to the
scheduler's decode thread, while tokenization (which only reads the vocabulary) may run anywhere.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from llama_cpp import _logger as llama_logger

from helixflow.config import ModelConfig
from helixflow.engine.base import EngineInfo
from helixflow.engine.bundled import resolve_bundled
from helixflow.errors import EngineError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ContextOptions:
    context_size: int
    parallel: int
    batch_size: int
    threads: int
    unified_kv: bool = False
    """False: each sequence owns context_size / parallel cells (llama.cpp streams), so its
    numerics never depend on what else is cached. True: one pool any sequence may fill."""
    flash_attention: bool | None = False
    """None lets llama.cpp decide. Off by default: llama.cpp's CPU flash-attention kernel sums
    in an order that depends on where a sequence's cells sit in the cache, so a reused prefix
    could change a temperature-0 reply."""
    embeddings: bool = False
    """An embedding context: the final hidden state of every token is output (no pooling by
    llama.cpp, no sampling); the caller pools them into one vector per input."""


class LlamaModel:
    """Owns one ``llama_model`` and one ``llama_context`` (freed by :meth:`close`)."""

    def __init__(self, path: Path, options: ContextOptions) -> None:
        if not path.is_file():
            raise EngineError(f"GGUF file not found: {path}", code="model_file_missing")
        llama_logger.set_verbose(False)
        llama_cpp.llama_backend_init()
        self.path = path
        self.options = options

        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not model:
            raise EngineError(f"llama.cpp could not load {path}", code="model_load_failed")
        self._model = model

        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = options.context_size
        ctx_params.n_batch = options.batch_size
        ctx_params.n_ubatch = options.batch_size
        ctx_params.n_seq_max = options.parallel
        ctx_params.n_threads = options.threads
        ctx_params.n_threads_batch = options.threads
        ctx_params.kv_unified = options.unified_kv
        # A full-size sliding-window cache keeps every position, so a reused prefix can be cut
        # anywhere (needed for prefix reuse on models with SWA layers, e.g. Gemma 3).
        ctx_params.swa_full = True
        ctx_params.no_perf = True
        ctx_params.flash_attn_type = {
            None: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
            True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[options.flash_attention]
        if options.embeddings:
            ctx_params.embeddings = True
            ctx_params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        ctx = llama_cpp.llama_init_from_model(model, ctx_params)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise EngineError(
                f"llama.cpp could not create a context for {path}", code="context_init_failed"
            )
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_ctx: int = llama_cpp.llama_n_ctx(ctx)
        self.n_ctx_seq: int = llama_cpp.llama_n_ctx_seq(ctx)
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(model)
        self.n_ubatch: int = llama_cpp.llama_n_ubatch(ctx)
        self.n_embd: int = llama_cpp.llama_model_n_embd_out(model)
        self.causal: bool = bool(llama_cpp.llama_get_causal_attn(ctx))
        self.bos_id: int = llama_cpp.llama_vocab_bos(self._vocab)
        self.eos_id: int = llama_cpp.llama_vocab_eos(self._vocab)
        self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._piece_cache: dict[int, bytes] = {}
        self._eog_cache: dict[int, bool] = {}
        self.fingerprint = _file_fingerprint(path)
        log.info(
            "loaded %s (%s, n_ctx=%d, %d per sequence, n_seq_max=%d, threads=%d)",
            path.name,
            self.description,
            self.n_ctx,
            self.n_ctx_seq,
            options.parallel,
            options.threads,
        )

    # -- raw handles for the scheduler -------------------------------------------------------
    @property
    def ctx(self) -> ctypes.c_void_p:
        return self._ctx  # type: ignore[no-any-return]

    @property
    def memory(self) -> ctypes.c_void_p:
        return self._memory  # type: ignore[no-any-return]

    @property
    def vocab(self) -> ctypes.c_void_p:
        return self._vocab  # type: ignore[no-any-return]

    # -- metadata ----------------------------------------------------------------------------
    @property
    def description(self) -> str:
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self._model, buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def metadata(self, key: str) -> str | None:
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def token_text(self, token: int) -> str:
        """The vocabulary entry of ``token`` rendered as text (special tokens included)."""
        return self.token_bytes(token, special=True).decode("utf-8", errors="replace")

    # -- vocabulary ----------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self._vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buf, capacity, add_special, parse_special
            )
        if n < 0:
            raise EngineError("tokenization failed", code="tokenize_failed")
        return list(buf[:n])

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The bytes a token contributes to generated text (cached per token)."""
        key = token if not special else -1 - token
        cached = self._piece_cache.get(key)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        piece = buf.raw[: max(n, 0)]
        self._piece_cache[key] = piece
        return piece

    def is_eog(self, token: int) -> bool:
        cached = self._eog_cache.get(token)
        if cached is None:
            cached = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
            self._eog_cache[token] = cached
        return cached

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            llama_cpp.llama_model_free(self._model)
            self._model = None


def default_threads() -> int:
    return max(
        1,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    )


def _file_fingerprint(path: Path) -> str:
    """A cheap, stable identity of a model file: size, and a hash of its head and tail."""
    stat = path.stat()
    digest = hashlib.sha256(str(stat.st_size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        if stat.st_size > 1 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def model_file(config: ModelConfig) -> Path:
    """The GGUF file a model entry names: its ``path``, or the bundled package's file."""
    if config.path is not None:
        return config.path.expanduser()
    return resolve_bundled(config.bundled or "")


FLASH_ATTENTION: dict[str, bool | None] = {"auto": None, "on": True, "off": False}
"""The ``flash_attention`` setting as :class:`ContextOptions` takes it (None: llama.cpp picks)."""


def engine_info(
    config: ModelConfig,
    model: LlamaModel,
    path: Path,
    *,
    context_size: int,
    chat_template: str | None,
) -> EngineInfo:
    """What the API reports about a loaded model."""
    return EngineInfo(
        model_id=config.id,
        context_size=context_size,
        train_context_size=model.n_ctx_train,
        parallel=config.parallel,
        vocab_size=model.n_vocab,
        fingerprint=f"fp_{model.fingerprint[:12]}",
        description=model.description,
        file_path=str(path),
        chat_template=chat_template,
        created=int(path.stat().st_mtime),
    )
