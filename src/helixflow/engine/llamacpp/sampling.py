"""Per-sequence sampling through llama.cpp sampler chains, and logprobs from raw logits."""

from __future__ import annotations

import ctypes
import random
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from helixflow.engine.base import SamplingParams, TokenLogprob, TopLogprob
from helixflow.engine.llamacpp.model import LlamaModel
from helixflow.errors import InvalidRequestError

_UINT32 = 0xFFFFFFFF
GREEDY_SHORTLIST = 256
"""Greedy picks under a grammar first try this many best tokens one by one, before masking
the whole vocabulary (the best allowed token is almost always among them)."""


def _pointer(data: ctypes.Array[llama_cpp.llama_token_data]) -> Any:
    """``data`` as the ``llama_token_data *`` that ``llama_token_data_array.data`` holds."""
    return ctypes.cast(data, llama_cpp.llama_token_data_p)


class GrammarError(InvalidRequestError):
    """llama.cpp could not parse a GBNF grammar."""

    default_code = "invalid_grammar"


class Grammar:
    """llama.cpp's grammar sampler over a model's vocabulary (freed by :meth:`close`).

    ``allows`` asks whether one token may come next; ``apply`` masks every token that may not;
    ``accept`` advances the grammar past a sampled token.
    """

    def __init__(self, model: LlamaModel, text: str, root: str = "root") -> None:
        sampler = llama_cpp.llama_sampler_init_grammar(
            model.vocab, text.encode("utf-8"), root.encode("utf-8")
        )
        if not sampler:
            raise GrammarError(
                f"llama.cpp could not parse the generation grammar (root rule {root!r}); "
                "its parse error is in the server log"
            )
        self._sampler = sampler
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(
            data=_pointer(self._one), size=1, selected=-1, sorted=False
        )

    def allows(self, token: int) -> bool:
        self._one[0] = llama_cpp.llama_token_data(token, 0.0, 0.0)
        self._one_array.data = _pointer(self._one)
        self._one_array.size = 1
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(self._one_array))
        return bool(np.isfinite(self._one[0].logit))

    def apply(self, candidates: Any) -> None:
        """``candidates``: a reference to a ``llama_token_data_array``."""
        llama_cpp.llama_sampler_apply(self._sampler, candidates)

    def accept(self, token: int) -> None:
        """Only for a token :meth:`allows` (llama.cpp aborts on any other)."""
        llama_cpp.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None


def check_grammar(model: LlamaModel, text: str, root: str = "root") -> None:
    """Raise :class:`GrammarError` unless llama.cpp parses ``text`` (only reads the vocabulary,
    so it may run beside the decode thread)."""
    Grammar(model, text, root).close()


class _Candidates:
    """A reusable ``llama_token_data_array`` over the whole vocabulary, filled from logits."""

    def __init__(self, n_vocab: int) -> None:
        self._n = n_vocab
        self._data = (llama_cpp.llama_token_data * n_vocab)()
        self._view = np.ctypeslib.as_array(self._data)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self.array = llama_cpp.llama_token_data_array()
        self.ref = ctypes.byref(self.array)

    def fill(self, logits: npt.NDArray[np.float32]) -> None:
        self._view["id"] = self._ids
        self._view["logit"] = logits
        self._view["p"] = 0.0
        # Samplers may point ``data`` elsewhere and shrink ``size``: reset both.
        self.array.data = _pointer(self._data)
        self.array.size = self._n
        self.array.selected = -1
        self.array.sorted = False

    def any_allowed(self) -> bool:
        return bool(np.isfinite(self._view["logit"]).any())

    def selected(self) -> int:
        return int(self.array.data[self.array.selected].id)

    def best_first(self, limit: int) -> list[int]:
        """Up to ``limit`` token ids, highest logit first (as the samplers left them)."""
        current = np.ctypeslib.as_array(self.array.data, shape=(self.array.size,))
        logits = current["logit"]
        k = min(limit, len(logits))
        if k <= 0:
            return []
        top = np.argpartition(-logits, k - 1)[:k]
        top = top[np.argsort(-logits[top], kind="stable")]
        return [int(t) for t in current["id"][top[np.isfinite(logits[top])]]]


class SamplerChain:
    """A llama.cpp sampler chain built from :class:`SamplingParams` (freed by :meth:`close`).

    Order follows llama.cpp's own: logit bias, penalties, then truncation (top-k, top-p, min-p),
    temperature and a seeded draw; temperature 0 ends in a greedy pick instead.

    With a grammar, the grammar comes first: only tokens it allows are ever drawn. Masking the
    whole vocabulary costs about as much as a decode step on a large vocabulary, so (as
    llama.cpp's own server does) the chain first samples freely, and the grammar masks and the
    chain resamples only when the grammar rejects that token. A greedy pick then tries the
    best tokens one by one (the first allowed one is the greedy pick among allowed tokens)
    before masking everything. A random draw follows the masked distribution (up to
    truncation, which the fast path applies before masking). Raises :class:`GrammarError` for
    a grammar llama.cpp cannot parse.
    """

    def __init__(self, model: LlamaModel, params: SamplingParams, seed: int | None) -> None:
        self._grammar = (
            Grammar(model, params.grammar, params.grammar_root) if params.grammar else None
        )
        self._candidates = _Candidates(model.n_vocab) if self._grammar else None
        self._n_vocab = model.n_vocab
        self._end = model.eos_id
        self._greedy = params.greedy
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain = llama_cpp.llama_sampler_chain_init(chain_params)
        self._bias_array: ctypes.Array[llama_cpp.llama_logit_bias] | None = None
        add = self._add
        if params.logit_bias:
            items = list(params.logit_bias.items())
            arr = (llama_cpp.llama_logit_bias * len(items))()
            for i, (token, bias) in enumerate(items):
                arr[i] = llama_cpp.llama_logit_bias(token, bias)
            self._bias_array = arr  # keep alive as long as the sampler
            add(llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(items), arr))
        if (
            params.repeat_penalty != 1.0
            or params.frequency_penalty != 0.0
            or params.presence_penalty != 0.0
        ):
            add(
                llama_cpp.llama_sampler_init_penalties(
                    model.n_vocab,
                    params.penalty_last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        if params.greedy:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            draw_seed = seed if seed is not None else random.getrandbits(32)
            add(llama_cpp.llama_sampler_init_dist(draw_seed & _UINT32))

    def _add(self, sampler: ctypes.c_void_p) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: ctypes.c_void_p, output_index: int) -> int:
        """Sample (and accept) a token from the ``output_index``-th output of the last decode."""
        if self._grammar is None:
            return int(llama_cpp.llama_sampler_sample(self._chain, ctx, output_index))
        return self._sample_constrained(ctx, output_index)

    def _sample_constrained(self, ctx: ctypes.c_void_p, output_index: int) -> int:
        grammar, candidates = self._grammar, self._candidates
        assert grammar is not None
        assert candidates is not None
        ptr = llama_cpp.llama_get_logits_ith(ctx, output_index)
        logits = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
        candidates.fill(logits)
        llama_cpp.llama_sampler_apply(self._chain, candidates.ref)
        token = candidates.selected()
        if not grammar.allows(token):
            shortlist = candidates.best_first(GREEDY_SHORTLIST) if self._greedy else []
            allowed = next((t for t in shortlist if grammar.allows(t)), None)
            if allowed is not None:
                token = allowed  # exactly the greedy pick among allowed tokens
            else:
                candidates.fill(logits)
                grammar.apply(candidates.ref)
                if not candidates.any_allowed():
                    # No token can continue the grammar: end the output here, as at EOS.
                    return self._end
                llama_cpp.llama_sampler_apply(self._chain, candidates.ref)
                token = candidates.selected()
        grammar.accept(token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
            self._bias_array = None
        if self._grammar is not None:
            self._grammar.close()
            self._grammar = None
            self._candidates = None


def logits_at(model: LlamaModel, output_index: int) -> npt.NDArray[np.float32]:
    ptr = llama_cpp.llama_get_logits_ith(model.ctx, output_index)
    return np.ctypeslib.as_array(ptr, shape=(model.n_vocab,))


def log_softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return shifted - float(np.log(np.sum(np.exp(shifted))))


def token_logprob(
    model: LlamaModel, logprobs: npt.NDArray[np.float64], token: int, top_n: int
) -> TokenLogprob:
    """The model's log-probability of ``token`` and its ``top_n`` most likely alternatives."""
    top: tuple[TopLogprob, ...] = ()
    if top_n > 0:
        candidates = np.argpartition(logprobs, -top_n)[-top_n:]
        ordered = candidates[np.argsort(-logprobs[candidates])]
        top = tuple(
            TopLogprob(
                token=_text(model, int(t)),
                token_bytes=model.token_bytes(int(t)),
                logprob=float(logprobs[t]),
            )
            for t in ordered
        )
    return TokenLogprob(
        token_id=token,
        token=_text(model, token),
        token_bytes=model.token_bytes(token),
        logprob=float(logprobs[token]),
        top=top,
    )


def _text(model: LlamaModel, token: int) -> str:
    return model.token_bytes(token).decode("utf-8", errors="replace")
