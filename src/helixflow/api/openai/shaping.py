"""Small helpers shared by the chat and completions serving code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from helixflow.api.openai.protocol import PromptTokensDetails, Usage
from helixflow.engine.base import Delta


def finish_reason(reason: str | None) -> Any:
    """Engine finish reasons as OpenAI names them."""
    return "stop" if reason in (None, "cancelled") else reason


@dataclass(slots=True)
class UsageCounter:
    """Token accounting of one reply, fed with each choice's final delta."""

    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, final: Delta) -> None:
        self.completion_tokens += final.completion_tokens
        if final.index == 0:  # every choice of one prompt reports the same reused prefix
            self.cached_tokens += final.cached_tokens

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
        )
