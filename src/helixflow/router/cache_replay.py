"""A cached reply replayed as the SSE chunks a streamed request would have received.

The cache keeps one form of each reply, the non-streamed JSON, since the stream flag is not
part of the key; a streamed request that hits it gets that reply cut into chunks here. The
bytes follow ``api/openai/sse.ChunkWriter`` exactly (the router sits below ``api`` and may not
import it; tests hold the two to the same output).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"

_ChoiceEvents = Callable[[int, Mapping[str, Any]], Iterator[dict[str, Any]]]


class _Writer:
    """Same bytes as ``ChunkWriter``: the fields every chunk repeats, then one choice."""

    def __init__(self, reply: Mapping[str, Any], object_name: str, include_usage: bool) -> None:
        head = orjson.dumps(
            {
                "id": reply.get("id"),
                "object": object_name,
                "created": reply.get("created"),
                "model": reply.get("model"),
                "system_fingerprint": reply.get("system_fingerprint"),
            }
        )[:-1]
        self._head = head
        self._prefix = b"data: " + head + b',"choices":['
        self._suffix = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"

    def choice(self, payload: dict[str, Any]) -> bytes:
        return self._prefix + orjson.dumps(payload) + self._suffix

    def usage(self, totals: Any) -> bytes:
        return b"data: " + self._head + b',"choices":[],"usage":' + orjson.dumps(totals) + b"}\n\n"


def _chat_events(index: int, choice: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Role, content, refusal, calls, finish: the order a live stream sends them in."""
    message: Mapping[str, Any] = choice.get("message") or {}

    def chunk(delta: dict[str, Any], logprobs: Any = None, finish: Any = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    yield chunk({"role": "assistant", "content": ""})
    for field in ("reasoning_content", "reasoning"):  # upstream reasoning models (vLLM...)
        if message.get(field):
            yield chunk({field: message[field]})
    content, logprobs = message.get("content"), choice.get("logprobs")
    if content or logprobs:
        yield chunk({"content": content or ""}, logprobs)
    if message.get("refusal"):
        yield chunk({"refusal": message["refusal"]})
    for position, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        delta = {
            "index": position,
            "id": call.get("id"),
            "type": call.get("type", "function"),
            "function": {"name": function.get("name"), "arguments": function.get("arguments")},
        }
        yield chunk({"tool_calls": [delta]})
    if message.get("function_call"):
        yield chunk({"function_call": message["function_call"]})
    yield chunk({}, None, choice.get("finish_reason"))


def _text_events(index: int, choice: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    text, logprobs = choice.get("text") or "", choice.get("logprobs")
    if text or logprobs:
        yield {"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}
    yield {
        "index": index,
        "text": "",
        "logprobs": None,
        "finish_reason": choice.get("finish_reason"),
    }


_KINDS: Mapping[str, tuple[str, _ChoiceEvents]] = MappingProxyType(
    {
        "chat.completion": ("chat.completion.chunk", _chat_events),
        "text_completion": ("text_completion", _text_events),
    }
)


def replay_chunks(reply: Mapping[str, Any], *, include_usage: bool) -> list[bytes]:
    """The SSE chunks (``data: {...}\\n\\n`` each, ``data: [DONE]`` last) of ``reply``, a
    ``chat.completion`` or ``text_completion`` object; raises ValueError for anything else.

    Each choice is sent whole, one after the other; the usage chunk (``choices: []``) comes
    last when ``include_usage``, as in a live stream with ``stream_options.include_usage``.
    """
    kind = _KINDS.get(str(reply.get("object")))
    if kind is None:
        raise ValueError(f"cannot replay a reply of object {reply.get('object')!r} as a stream")
    object_name, events = kind
    writer = _Writer(reply, object_name, include_usage)
    chunks = [
        writer.choice(payload)
        for position, choice in enumerate(reply.get("choices") or ())
        for payload in events(choice.get("index", position), choice)
    ]
    if include_usage:
        chunks.append(writer.usage(reply.get("usage")))
    chunks.append(DONE)
    return chunks
