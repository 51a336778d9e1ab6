"""Small helpers shared by the chat and completions serving code."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from helixflow.api.openai.protocol import (
    AssistantMessage,
    FinishReasonOut,
    FunctionCall,
    PromptTokensDetails,
    ToolCall,
    Usage,
)
from helixflow.api.openai.tool_parsers import ParsedCall, ParsedOutput
from helixflow.engine.base import Delta


def finish_reason(reason: str | None) -> Any:
    """Engine finish reasons as OpenAI names them."""
    return "stop" if reason in (None, "cancelled") else reason


def chat_finish_reason(reason: str | None, *, calls: bool, legacy: bool) -> FinishReasonOut:
    """A reply that made calls finished to have them run (``function_call`` when the request
    used the deprecated ``functions``), unless ``max_tokens`` cut it short (``length``: its
    complete calls are still returned, but one may be missing)."""
    if calls and reason != "length":
        return "function_call" if legacy else "tool_calls"
    return finish_reason(reason)  # type: ignore[no-any-return]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def assistant_message(parsed: ParsedOutput, *, legacy: bool) -> AssistantMessage:
    """The reply's message: content (None when it is only calls) and its calls."""
    if not parsed.calls:
        return AssistantMessage(content=parsed.content)
    functions = [FunctionCall(name=c.name, arguments=c.arguments) for c in parsed.calls]
    if legacy:
        return AssistantMessage(content=parsed.content, function_call=functions[0])
    return AssistantMessage(
        content=parsed.content,
        tool_calls=[ToolCall(id=new_call_id(), function=f) for f in functions],
    )


def call_deltas(position: int, call: ParsedCall, *, legacy: bool) -> list[dict[str, Any]]:
    """One call as streamed deltas: first its index, id, type, name and empty arguments, then
    its arguments (what the ``openai`` client assembles)."""
    if legacy:
        return [
            {"function_call": {"name": call.name, "arguments": ""}},
            {"function_call": {"arguments": call.arguments}},
        ]
    header = {
        "index": position,
        "id": new_call_id(),
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    arguments = {"index": position, "function": {"arguments": call.arguments}}
    return [{"tool_calls": [header]}, {"tool_calls": [arguments]}]


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
