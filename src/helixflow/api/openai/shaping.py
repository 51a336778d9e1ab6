"""Small helpers shared by the chat and completions serving code."""

from __future__ import annotations

from typing import Any

from helixflow.api.openai.protocol import PromptTokensDetails, Usage


def finish_reason(reason: str | None) -> Any:
    """Engine finish reasons as OpenAI names them."""
    return "stop" if reason in (None, "cancelled") else reason


def usage(prompt: int, completion: int, cached: int) -> Usage:
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )
