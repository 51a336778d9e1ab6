"""Continuous batching on one llama.cpp context, driven by a dedicated decode thread.

Each step makes ONE ``llama_decode`` call holding a token for every decoding sequence plus a
bounded chunk of prompt tokens (chunked prefill), so new requests join between steps and long
prompts never freeze running streams. All sequences share one KV budget, either split evenly
into per-sequence streams (the default) or as one unified pool:

* a new request takes the free slot whose cached tokens share the longest prefix with its
  prompt, or copies that prefix from any other slot (``llama_memory_seq_cp``), and only
  computes the rest;
* ``n > 1`` computes the prompt once and copies its KV into the sibling sequences;
* with a unified pool, when the cache is full, idle cached prefixes are dropped first, then
  the youngest running sequence is preempted and later recomputed (its output so far is kept);
  with per-sequence streams a sequence ends with ``length`` when its own share is full.

Asyncio talks to this thread through an inbox (submit / cancel) and per-request asyncio queues
fed with ``loop.call_soon_threadsafe`` once per step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import llama_cpp

from helixflow.engine.base import (
    Delta,
    EngineStats,
    FinishReason,
    GenerationRequest,
    KVRestore,
    TokenLogprob,
)
from helixflow.engine.llamacpp.model import LlamaModel
from helixflow.engine.llamacpp.sampling import (
    SamplerChain,
    check_grammar,
    log_softmax,
    logits_at,
    token_logprob,
)
from helixflow.engine.llamacpp.sequence import Group, Phase, Sequence, Slot
from helixflow.engine.text import StopMatcher, common_prefix_len
from helixflow.errors import EngineError, InvalidRequestError, QueueFullError

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5
_MIN_STREAM_COPY_TOKENS = 16


@dataclass(frozen=True, slots=True)
class SchedulerOptions:
    model_id: str
    parallel: int
    batch_size: int
    prefill_chunk: int
    max_queue: int
    prefix_cache: bool
    retry_after_s: int
    save_min_tokens: int = 64
    """Session states shorter than this are not saved (recomputing them is cheap)."""


SaveState = Callable[[GenerationRequest, list[int], bytes], None]
"""Receives, on the event loop, a finished session's request, its KV tokens and state."""


@dataclass(slots=True)
class _BatchEntry:
    seq: Sequence
    start: int  # index in seq.tokens of the first token fed this step
    count: int
    first_row: int  # batch row of the first token
    wants_sample: bool


class Scheduler:
    """Owns the decode thread; every llama.cpp context call after loading happens there."""

    def __init__(
        self,
        model: LlamaModel,
        options: SchedulerOptions,
        loop: asyncio.AbstractEventLoop,
        save_state: SaveState | None = None,
    ) -> None:
        self._model = model
        self._save_state = save_state
        self._saves: list[tuple[GenerationRequest, list[int], bytes]] = []
        self._restores = 0
        self._restored_tokens = 0
        self._restore_failures = 0
        self._opts = options
        self._loop = loop
        self._slots = [Slot(seq_id=i) for i in range(options.parallel)]
        self._waiting: collections.deque[Group] = collections.deque()
        self._running: list[Sequence] = []
        self._lock = threading.Lock()
        self._inbox: collections.deque[Group] = collections.deque()
        self._cancels: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._queued = 0  # submitted and not yet admitted (guarded by _lock)
        self._clock = 0
        self._batch = llama_cpp.llama_batch_init(options.batch_size, 0, 1)
        self._unified = model.options.unified_kv
        # Copying a per-sequence stream moves its whole buffer: worth it only for a prefix
        # long enough that recomputing it would cost more.
        self._min_copy = 1 if self._unified else _MIN_STREAM_COPY_TOKENS
        self._moves = 0
        self._outbox: list[tuple[Group, list[Delta] | BaseException]] = []
        self._steps = 0
        self._tokens_generated = 0
        self._prompt_processed = 0
        self._prompt_reused = 0
        self._thread = threading.Thread(
            target=self._run, name=f"decode-{options.model_id}", daemon=True
        )

    # -- called from asyncio -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        llama_cpp.llama_batch_free(self._batch)

    def submit(self, group: Group) -> None:
        """Queue a request; raises :class:`QueueFullError` past the waiting limit, and
        :class:`InvalidRequestError` for more choices than slots (it could never start) or a
        grammar llama.cpp cannot parse."""
        if group.request.n > len(self._slots):
            raise InvalidRequestError(
                f"n={group.request.n} exceeds the {len(self._slots)} parallel sequences "
                "this model serves",
                param="n",
                code="n_too_large",
            )
        sampling = group.request.sampling
        if sampling.grammar is not None:  # a bad grammar is refused here, not on the thread
            check_grammar(self._model, sampling.grammar, sampling.grammar_root)
        with self._lock:
            free = sum(1 for s in self._slots if s.owner is None)
            if self._queued >= self._opts.max_queue and self._queued + group.request.n > free:
                raise QueueFullError(
                    self._opts.model_id, self._queued, retry_after=self._opts.retry_after_s
                )
            self._queued += 1
            self._inbox.append(group)
        self._wake.set()

    def cancel(self, request_id: str) -> None:
        self._cancels.append(request_id)
        self._wake.set()

    def stats(self) -> EngineStats:
        with self._lock:
            queued = self._queued
        used = min(sum(len(s.tokens) for s in self._slots), self._model.n_ctx)
        return EngineStats(
            active_sequences=sum(1 for s in self._slots if s.owner is not None),
            queued_requests=queued,
            kv_cells_used=used,
            kv_cells_total=self._model.n_ctx,
            steps=self._steps,
            tokens_generated=self._tokens_generated,
            prompt_tokens_processed=self._prompt_processed,
            prompt_tokens_reused=self._prompt_reused,
            sequence_moves=self._moves,
            kv_restores=self._restores,
            kv_restored_tokens=self._restored_tokens,
            kv_restore_failures=self._restore_failures,
        )

    # -- the decode thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._drain_inbox()
                self._resume_preempted()
                self._admit()
                self._compact()
                if not self._running:
                    self._flush_outbox()
                    self._wake.wait(_IDLE_WAIT_S)
                    self._wake.clear()
                    continue
                self._step()
            except Exception as exc:  # never let the thread die: fail what was running
                log.exception("decode step failed on %s", self._opts.model_id)
                self._fail_all(EngineError(f"inference failed: {exc}"))
            self._flush_outbox()
        self._fail_all(EngineError("the engine is shutting down", code="engine_stopped"))
        self._flush_outbox()

    def _drain_inbox(self) -> None:
        while self._inbox:
            self._waiting.append(self._inbox.popleft())
        cancelled: set[str] = set()
        while self._cancels:
            cancelled.add(self._cancels.popleft())
        if not cancelled:
            return
        for group in [g for g in self._waiting if g.request_id in cancelled]:
            self._waiting.remove(group)
            self._dequeued()
        for seq in [s for s in self._running if s.group.request_id in cancelled]:
            self._finish(seq, "cancelled")

    def _dequeued(self) -> None:
        with self._lock:
            self._queued -= 1

    def _admit(self) -> None:
        if any(s.phase is Phase.PREEMPTED for s in self._running):
            return  # preempted sequences go first
        while self._waiting:
            group = self._waiting[0]
            free = [s for s in self._slots if s.owner is None]
            if len(free) < group.request.n:
                return
            self._waiting.popleft()
            self._dequeued()
            self._start_group(group, free)

    def _start_group(self, group: Group, free: list[Slot]) -> None:
        request = group.request
        prompt = request.prompt_tokens
        self._clock += 1
        first_slot, reused = self._place_prompt(
            prompt, free, request.prompt_logprobs is not None, request.restore
        )
        free.remove(first_slot)
        # Siblings take the least useful caches (unified) or the lowest ids (streams).
        free.sort(key=lambda s: s.last_used if self._unified else s.seq_id)
        seqs: list[Sequence] = []
        for index in range(request.n):
            slot = first_slot if index == 0 else free.pop(0)
            seed = request.sampling.seed
            seq = Sequence(
                group=group,
                index=index,
                slot=slot,
                tokens=list(prompt),
                max_tokens=request.sampling.max_tokens,
                sampler=SamplerChain(
                    self._model, request.sampling, None if seed is None else seed + index
                ),
                admitted=self._clock,
                stop=StopMatcher(request.sampling.stop),
            )
            slot.owner = seq
            slot.last_used = self._clock
            if index == 0:
                seq.n_past = seq.cached_tokens = reused
                seq.prompt_logprobs_done = request.prompt_logprobs is None
            else:
                seq.parent = seqs[0]
                seq.phase = Phase.WAITING_PARENT
                seq.prompt_logprobs_done = True
            seqs.append(seq)
        group.sequences = seqs
        self._running.extend(seqs)
        self._prompt_reused += reused

    def _place_prompt(
        self, prompt: list[int], free: list[Slot], no_reuse: bool, restore: KVRestore | None
    ) -> tuple[Slot, int]:
        """Pick a free slot for ``prompt`` and bring the longest cached prefix into it: from
        a slot's cache, or from a saved session state when that covers more."""
        reuse = not no_reuse and self._opts.prefix_cache
        matched = {
            s.seq_id: common_prefix_len(s.tokens, prompt) if reuse else 0 for s in self._slots
        }
        target = self._choose_slot(matched, free)
        limit = len(prompt) - 1  # the last prompt token is always fed, for its logits
        if restore is not None and not no_reuse:
            useful = min(common_prefix_len(list(restore.tokens), prompt), limit)
            cached = min(max(matched.values(), default=0), limit)
            if useful - cached >= self._min_copy:
                kept = self._restore(target, restore, useful)
                if kept:
                    return target, kept
                matched[target.seq_id] = 0
        if not reuse:
            self._clear_slot(target)
            return target, 0
        own = min(matched[target.seq_id], limit)
        source = max(self._slots, key=lambda s: matched[s.seq_id])
        copied = min(matched[source.seq_id], limit)
        if source is not target and copied - own >= self._min_copy:
            return target, self._copy_prefix(source, target, copied)
        return target, self._truncate(target, own)

    def _choose_slot(self, matched: dict[int, int], free: list[Slot]) -> Slot:
        """``matched``: each slot's cached prefix length in common with the prompt."""
        if self._unified:
            # Copies are free in a unified pool: keep the best cache where it is, else LRU.
            return max(free, key=lambda s: (matched[s.seq_id], -s.last_used))
        # Per-sequence streams: llama.cpp decodes sequences in one micro-batch only when their
        # ids are consecutive, so busy slots are kept packed at the lowest ids.
        return min(free, key=lambda s: s.seq_id)

    def _copy_prefix(self, source: Slot, target: Slot, length: int) -> int:
        mem = self._model.memory
        self._clear_slot(target)
        # Whole-sequence copies work in both cache layouts (between per-sequence streams
        # llama.cpp copies the buffer); the unneeded tail is then dropped.
        llama_cpp.llama_memory_seq_cp(mem, source.seq_id, target.seq_id, -1, -1)
        target.tokens = list(source.tokens)
        return self._truncate(target, length)

    def _restore(self, slot: Slot, restore: KVRestore, length: int) -> int:
        """Load a saved session state into ``slot`` and keep its first ``length`` tokens;
        0 when llama.cpp refuses the state (the prompt is then computed as usual)."""
        self._clear_slot(slot)
        state = restore.state
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        read = llama_cpp.llama_state_seq_set_data(self._model.ctx, buffer, len(state), slot.seq_id)
        if read == 0:
            self._restore_failures += 1
            log.warning(
                "%s: a saved session state (%s tier) was refused by llama.cpp; recomputing",
                self._opts.model_id,
                restore.tier,
            )
            self._clear_slot(slot)
            return 0
        slot.tokens = list(restore.tokens)
        kept = self._truncate(slot, length)
        if kept:
            self._restores += 1
            self._restored_tokens += kept
        return kept

    def _capture(self, seq: Sequence) -> None:
        """Keep a finished session's KV state, to hand to the store after this step."""
        request = seq.group.request
        slot = seq.slot
        if (
            self._save_state is None
            or request.session_id is None
            or seq.index != 0
            or seq.group.cancelled
            or len(slot.tokens) < self._opts.save_min_tokens
        ):
            return
        # Only the prompt's KV is kept. The reply's was computed token by token, and
        # llama.cpp's one-row kernels round differently from the many-row ones that prefill
        # uses: restoring it would make the next turn's answer differ, in late tokens, from
        # the one a fresh server gives. The reply is recomputed with the next prompt instead.
        if self._truncate(slot, len(request.prompt_tokens)) < self._opts.save_min_tokens:
            return
        ctx = self._model.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, slot.seq_id)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, slot.seq_id)
        if written:
            self._saves.append((request, list(slot.tokens), ctypes.string_at(buffer, written)))

    def _truncate(self, slot: Slot, length: int) -> int:
        """Keep the first ``length`` cached tokens of ``slot``; returns how many were kept."""
        if not llama_cpp.llama_memory_seq_rm(self._model.memory, slot.seq_id, length, -1):
            self._clear_slot(slot)
            return 0
        del slot.tokens[length:]
        return length

    def _compact(self) -> None:
        """Move the highest busy sequence into the lowest free slot until busy slots are
        consecutive (per-sequence streams only: one stream copy saves a micro-batch on every
        later step). The vacated slot keeps its KV as an idle prefix cache."""
        if self._unified:
            return
        while True:
            busy = [s for s in self._slots if s.owner is not None]
            if not busy:
                return
            highest = max(busy, key=lambda s: s.seq_id)
            hole = next((s for s in self._slots[: highest.seq_id] if s.owner is None), None)
            if hole is None or highest.owner is None:
                return
            self._move(highest.owner, hole)

    def _move(self, seq: Sequence, target: Slot) -> None:
        source = seq.slot
        self._clear_slot(target)
        if source.tokens:
            llama_cpp.llama_memory_seq_cp(self._model.memory, source.seq_id, target.seq_id, -1, -1)
            target.tokens = list(source.tokens)
        target.owner = seq
        target.last_used = self._clock
        seq.slot = target
        source.owner = None
        self._moves += 1

    def _clear_slot(self, slot: Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self._model.memory, slot.seq_id, -1, -1)
        slot.tokens = []

    # -- one step ------------------------------------------------------------------------------
    def _step(self) -> None:
        while True:
            entries = self._build_batch()
            if not entries:
                return
            rc = llama_cpp.llama_decode(self._model.ctx, self._batch)
            if rc == 0:
                break
            if rc == 1 and self._make_room(entries):
                continue  # the cache state was restored; retry with more room
            raise EngineError(f"llama_decode returned {rc}", code="decode_failed")
        self._steps += 1
        for entry in entries:
            self._after_decode(entry)

    def _build_batch(self) -> list[_BatchEntry]:
        batch = self._batch
        entries: list[_BatchEntry] = []
        row = 0
        decoding = [s for s in self._running if s.phase is Phase.RUNNING and s.pending == 1]
        prefilling = [s for s in self._running if s.phase is Phase.RUNNING and s.pending > 1]
        capacity = self._opts.batch_size
        budget = self._opts.prefill_chunk if decoding else capacity
        budget = min(budget, capacity - len(decoding))
        if self._unified:
            budget = min(budget, self._kv_free() - len(decoding))
        plan: list[tuple[Sequence, int]] = [(s, 1) for s in decoding[:capacity]]
        for seq in sorted(prefilling, key=lambda s: s.admitted):
            if budget <= 0:
                break
            count = min(seq.pending, budget)
            plan.append((seq, count))
            budget -= count
        # llama.cpp packs per-sequence streams into one micro-batch only for consecutive ids
        # met in increasing order, so the batch is laid out by sequence id.
        plan.sort(key=lambda item: item[0].seq_id)
        for seq, count in plan:
            start = seq.n_past
            wants_sample = start + count == len(seq.tokens)
            all_logits = not seq.prompt_logprobs_done
            seq_id = seq.seq_id
            for offset in range(count):
                batch.token[row + offset] = seq.tokens[start + offset]
                batch.pos[row + offset] = start + offset
                batch.n_seq_id[row + offset] = 1
                batch.seq_id[row + offset][0] = seq_id
                batch.logits[row + offset] = all_logits
            if wants_sample:
                batch.logits[row + count - 1] = True
            entries.append(_BatchEntry(seq, start, count, row, wants_sample))
            row += count
        batch.n_tokens = row
        return entries

    def _make_room(self, entries: list[_BatchEntry]) -> bool:
        """Free KV cells after a full-cache failure. False when nothing more can be freed."""
        if not self._unified:
            # Each sequence owns its cells: only the one that outgrew them can give way.
            longest = max(entries, key=lambda e: e.start + e.count).seq
            self._finish(longest, "length")
            return bool(self._running)
        idle = [s for s in self._slots if s.owner is None and s.tokens]
        if idle:
            for slot in idle:
                self._clear_slot(slot)
            log.debug("%s: dropped %d idle cached prefixes", self._opts.model_id, len(idle))
            return True
        running = [s for s in self._running if s.phase is Phase.RUNNING and s.n_past > 0]
        if len(running) <= 1:
            for seq in running or [e.seq for e in entries]:
                self._finish(seq, "length")
            return bool(self._running)
        victim = max(running, key=lambda s: (s.admitted, s.index))
        log.info(
            "%s: KV cache full, preempting request %s (recomputed later)",
            self._opts.model_id,
            victim.group.request_id,
        )
        self._clear_slot(victim.slot)
        victim.n_past = 0
        victim.phase = Phase.PREEMPTED
        return True

    def _kv_free(self) -> int:
        """Free cells of a unified pool (an underestimate: shared prefixes count twice)."""
        return self._model.n_ctx - sum(len(s.tokens) for s in self._slots)

    def _resume_preempted(self) -> None:
        preempted = sorted(
            (s for s in self._running if s.phase is Phase.PREEMPTED), key=lambda s: s.admitted
        )
        for seq in preempted:
            active = [s for s in self._running if s.phase is Phase.RUNNING]
            headroom = 8 * len(active)
            if active and self._kv_free() < seq.pending + headroom:
                return
            if not active:
                for slot in self._slots:
                    if slot.owner is None and slot.tokens:
                        self._clear_slot(slot)
            seq.phase = Phase.RUNNING

    def _after_decode(self, entry: _BatchEntry) -> None:
        seq = entry.seq
        fed = seq.tokens[entry.start : entry.start + entry.count]
        seq.slot.tokens.extend(fed)
        seq.n_past += entry.count
        if seq.generated == 0:
            self._prompt_processed += entry.count
        if not seq.prompt_logprobs_done:
            self._emit_prompt_logprobs(entry)
        if not entry.wants_sample:
            return
        row = entry.first_row + entry.count - 1
        siblings = [
            s for s in seq.group.sequences if s.parent is seq and s.phase is Phase.WAITING_PARENT
        ]
        for sibling in siblings:
            self._fork(seq, sibling)
        for target in (seq, *siblings):
            self._sample(target, row)

    def _fork(self, parent: Sequence, child: Sequence) -> None:
        """Give ``child`` the parent's prompt KV (shared cells in a unified pool, a buffer copy
        between per-sequence streams)."""
        self._clear_slot(child.slot)
        llama_cpp.llama_memory_seq_cp(self._model.memory, parent.seq_id, child.seq_id, -1, -1)
        child.slot.tokens = list(parent.slot.tokens)
        child.n_past = parent.n_past
        child.cached_tokens = parent.cached_tokens
        child.phase = Phase.RUNNING
        child.parent = None

    def _sample(self, seq: Sequence, row: int) -> None:
        model = self._model
        token = seq.sampler.sample(model.ctx, row)
        sampling = seq.group.request.sampling
        if model.is_eog(token) and (not sampling.ignore_eos or sampling.grammar is not None):
            self._finish(seq, "stop")
            return
        seq.tokens.append(token)
        seq.generated += 1
        self._tokens_generated += 1
        logprobs: list[TokenLogprob] | None = None
        if sampling.logprobs is not None:
            scores = log_softmax(logits_at(model, row))
            logprobs = [token_logprob(model, scores, token, sampling.logprobs)]
        text = seq.stop.push(seq.utf8.push(model.token_bytes(token)))
        self._emit(seq, Delta(index=seq.index, text=text, token_ids=[token], logprobs=logprobs))
        if seq.stop.stopped:
            self._finish(seq, "stop")
        elif seq.generated >= seq.max_tokens or len(seq.tokens) >= model.n_ctx_seq:
            self._finish(seq, "length")

    def _emit_prompt_logprobs(self, entry: _BatchEntry) -> None:
        seq = entry.seq
        model = self._model
        top_n = seq.group.request.prompt_logprobs or 0
        out: list[TokenLogprob] = []
        if entry.start == 0:
            first = seq.tokens[0]
            out.append(TokenLogprob(first, model.token_text(first), model.token_bytes(first), None))
        prompt_len = len(seq.group.request.prompt_tokens)
        for offset in range(entry.count):
            pos = entry.start + offset
            if pos + 1 >= prompt_len:
                break
            scores = log_softmax(logits_at(model, entry.first_row + offset))
            out.append(token_logprob(model, scores, seq.tokens[pos + 1], top_n))
        if entry.start + entry.count >= prompt_len:
            seq.prompt_logprobs_done = True
        self._emit(seq, Delta(index=seq.index, prompt_logprobs=out))

    # -- output --------------------------------------------------------------------------------
    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        if seq.phase is Phase.FINISHED:
            return
        tail = seq.stop.push(seq.utf8.flush()) + seq.stop.flush()
        if reason != "cancelled" and seq.n_past > 0:
            self._capture(seq)
        seq.phase = Phase.FINISHED
        seq.sampler.close()
        self._running.remove(seq)
        slot = seq.slot
        slot.owner = None
        slot.last_used = self._clock
        if seq.parent is not None or seq.n_past == 0:
            self._clear_slot(slot)
        self._emit(
            seq,
            Delta(
                index=seq.index,
                text=tail,
                finish_reason=reason,
                completion_tokens=seq.generated,
                cached_tokens=seq.cached_tokens,
            ),
        )

    def _emit(self, seq: Sequence, delta: Delta) -> None:
        group = seq.group
        if group.cancelled:
            return
        if self._outbox and self._outbox[-1][0] is group:
            pending = self._outbox[-1][1]
            if isinstance(pending, list):
                pending.append(delta)
                return
        self._outbox.append((group, [delta]))

    def _fail_all(self, error: BaseException) -> None:
        """End every running and waiting request with ``error`` (their slots are cleared)."""
        failed: dict[int, Group] = {}
        for seq in list(self._running):
            failed[id(seq.group)] = seq.group
            self._running.remove(seq)
            seq.phase = Phase.FINISHED
            seq.sampler.close()
            seq.slot.owner = None
            self._clear_slot(seq.slot)
        while self._waiting:
            group = self._waiting.popleft()
            self._dequeued()
            failed[id(group)] = group
        for group in failed.values():
            self._outbox.append((group, error))

    def _flush_outbox(self) -> None:
        if self._saves and self._save_state is not None:
            saves, self._saves = self._saves, []
            save = self._save_state
            with contextlib.suppress(RuntimeError):
                for request, tokens, state in saves:
                    self._loop.call_soon_threadsafe(save, request, tokens, state)
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        # RuntimeError: the event loop is closed, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_deliver, outbox)


def _deliver(outbox: list[tuple[Group, list[Delta] | BaseException]]) -> None:
    for group, item in outbox:
        group.sink.put_nowait(item)
