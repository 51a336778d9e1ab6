"""Engine token logprobs in OpenAI's two formats: chat (``content`` list) and legacy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from helixflow.engine.base import TokenLogprob


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob if t.logprob is not None else 0.0,
                "bytes": list(t.token_bytes),
                "top_logprobs": [
                    {"token": alt.token, "logprob": alt.logprob, "bytes": list(alt.token_bytes)}
                    for alt in t.top
                ],
            }
            for t in tokens
        ],
        "refusal": None,
    }


def legacy_logprobs(tokens: Sequence[TokenLogprob], text_start: int = 0) -> dict[str, Any]:
    """``{tokens, token_logprobs, top_logprobs, text_offset}`` with offsets from ``text_start``."""
    offsets: list[int] = []
    offset = text_start
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [
            ({alt.token: alt.logprob for alt in t.top} if t.logprob is not None else None)
            for t in tokens
        ],
        "text_offset": offsets,
    }
