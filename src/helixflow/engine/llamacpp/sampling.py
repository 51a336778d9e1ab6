"""Per-sequence sampling through llama.cpp sampler chains, and logprobs from raw logits."""

from __future__ import annotations

import ctypes
import random

import llama_cpp
import numpy as np
import numpy.typing as npt

from helixflow.engine.base import SamplingParams, TokenLogprob, TopLogprob
from helixflow.engine.llamacpp.model import LlamaModel

_UINT32 = 0xFFFFFFFF


class SamplerChain:
    """A llama.cpp sampler chain built from :class:`SamplingParams` (freed by :meth:`close`).

    Order follows llama.cpp's own: logit bias, penalties, then truncation (top-k, top-p, min-p),
    temperature and a seeded draw; temperature 0 ends in a greedy pick instead.
    """

    def __init__(self, model: LlamaModel, params: SamplingParams, seed: int | None) -> None:
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
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, output_index))

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
            self._bias_array = None


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
