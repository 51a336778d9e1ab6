"""Tool calls in model output: one parser class per wire format, registered by name.

A format knows how its calls look (to parse them, to write earlier calls back into a prompt,
to describe them to a model whose template cannot) and how to constrain generation to them.
The registry picks the format a model's chat template was written for; a template that knows
no tools gets the generic parser, which reads Hermes-style ``<tool_call>`` tags and bare JSON.

Parsing is incremental: :class:`ToolStream` turns streamed text into content pieces and
complete calls, holding back only what may still become a call. Non-streamed replies go
through the same stream in one piece.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from helixflow.engine.grammar import GrammarBuilder, literal


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: str
    """The arguments object as compact JSON text."""


Event = str | ParsedCall
"""What a :class:`ToolStream` yields: content text, or one complete call."""


@dataclass(slots=True)
class ParsedOutput:
    content: str | None
    calls: list[ParsedCall]


def decode_calls(text: str, known: Collection[str]) -> list[ParsedCall] | None:
    """Calls written as JSON: one object, a list, or several separated by ``;``/``,``/space.

    Each needs a ``name`` among ``known`` and an ``arguments`` (or ``parameters``) object
    (JSON text of one is accepted too). Anything else is None: the text is not a call.
    """
    text = _strip_fence(text.strip())
    decoder = json.JSONDecoder()
    items: list[Any] = []
    pos = 0
    while pos < len(text):
        if text[pos] in " \t\r\n;,":
            pos += 1
            continue
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        items.extend(value if isinstance(value, list) else [value])
    calls = [_call(item, known) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _call(item: Any, known: Collection[str]) -> ParsedCall | None:
    if not isinstance(item, dict) or item.get("name") not in known:
        return None
    args = item.get("arguments", item.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(
        str(item["name"]), json.dumps(args, ensure_ascii=False, separators=(",", ":"))
    )


def _strip_fence(text: str) -> str:
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        first_newline = text.find("\n")
        return text[first_newline + 1 : -3].strip() if first_newline >= 0 else text[3:-3]
    return text


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


@dataclass(slots=True)
class ToolStream:
    """Incremental parsing of one choice's output (see the module docstring)."""

    known: Collection[str]
    max_calls: int | None
    tags: tuple[str, str] | None
    bare_starts: tuple[str, ...]
    """How a reply that is nothing but calls may begin (empty: only tagged calls count)."""
    _buffer: str = field(default="", init=False)
    _mode: Literal["start", "bare", "text", "call"] = field(default="start", init=False)
    _calls: int = field(default=0, init=False)
    _seen_call: bool = field(default=False, init=False)

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> list[Event]:
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> list[Event]:
        out: list[Event] = []
        while True:
            if self._mode == "start" and not self._start(final):
                return out
            if self._mode == "bare":
                if final:
                    self._decode(self._buffer, self._buffer, out)
                    self._buffer = ""
                return out
            if self._mode == "text" and not self._text(final, out):
                return out
            if self._mode == "call" and not self._inside_call(final, out):
                return out

    def _start(self, final: bool) -> bool:
        """Decide whether the reply is bare calls; False while it cannot be told yet."""
        head = self._buffer.lstrip()
        if not final and any(s.startswith(head) and len(head) < len(s) for s in self.bare_starts):
            return False
        bare = any(head.startswith(s) for s in self.bare_starts)
        self._mode = "bare" if bare else "text"
        return True

    def _text(self, final: bool, out: list[Event]) -> bool:
        if self.tags is None:
            self._content(self._buffer, out)
            self._buffer = ""
            return False
        start = self.tags[0]
        at = self._buffer.find(start)
        if at < 0:
            keep = 0 if final else _partial_suffix(self._buffer, start)
            self._content(self._buffer[: len(self._buffer) - keep], out)
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return False
        self._content(self._buffer[:at], out)
        self._buffer = self._buffer[at + len(start) :]
        self._mode = "call"
        return True

    def _inside_call(self, final: bool, out: list[Event]) -> bool:
        assert self.tags is not None
        start, end = self.tags
        at = self._buffer.find(end)
        if at < 0 and not final:
            return False
        if at < 0:  # the reply ended inside the tags: the call may still be complete
            body, raw, self._buffer = self._buffer, start + self._buffer, ""
        else:
            body, raw = self._buffer[:at], start + self._buffer[: at + len(end)]
            self._buffer = self._buffer[at + len(end) :]
        self._decode(body, raw, out)
        self._mode = "text"
        return True

    def _decode(self, body: str, raw: str, out: list[Event]) -> None:
        head = body.lstrip()
        for prefix in self.bare_starts:
            if prefix[0] not in "{[`" and head.startswith(prefix):
                head = head[len(prefix) :]
        calls = decode_calls(head, self.known)
        if calls is None:
            self._content(raw, out)
            return
        self._seen_call = True
        for call in calls:
            if self.max_calls is None or self._calls < self.max_calls:
                out.append(call)
                self._calls += 1

    def _content(self, text: str, out: list[Event]) -> None:
        # Content comes before calls, as in OpenAI's replies: after the first call, text
        # (separators, or the start of a call cut off by max_tokens) is dropped.
        if text and not self._seen_call:
            out.append(text)


def collect(events: Iterable[Event]) -> ParsedOutput:
    """A whole reply's events as content (exact text when there are no calls) and calls."""
    texts: list[str] = []
    calls: list[ParsedCall] = []
    for event in events:
        if isinstance(event, ParsedCall):
            calls.append(event)
        else:
            texts.append(event)
    content = "".join(texts)
    if calls:
        return ParsedOutput(content.strip() or None, calls)
    return ParsedOutput(content, [])


class ToolCallParser:
    """A tool-call wire format. Subclasses set the class variables; instances carry one
    request's callable functions and how many calls a reply may make."""

    name: ClassVar[str]
    markers: ClassVar[tuple[str, ...]] = ()
    """Substrings of a chat template written for this format."""
    tags: ClassVar[tuple[str, str] | None] = ("<tool_call>\n", "\n</tool_call>")
    bare_starts: ClassVar[tuple[str, ...]] = ()
    arguments_key: ClassVar[str] = "arguments"
    separator: ClassVar[str] = "\n"

    def __init__(self, known: Collection[str], *, max_calls: int | None = None) -> None:
        self.known = frozenset(known)
        self.max_calls = max_calls

    def stream(self) -> ToolStream:
        tags = None if self.tags is None else (self.tags[0].strip(), self.tags[1].strip())
        return ToolStream(self.known, self.max_calls, tags, self.bare_starts)

    def parse(self, text: str) -> ParsedOutput:
        stream = self.stream()
        return collect([*stream.feed(text), *stream.finish()])

    def render_call(self, name: str, arguments: Any) -> str:
        """One call as the model would write it (for earlier turns of a conversation)."""
        body = json.dumps({"name": name, self.arguments_key: arguments}, ensure_ascii=False)
        return body if self.tags is None else self.tags[0] + body + self.tags[1]

    def instructions(self, tools: Sequence[dict[str, Any]]) -> str:
        """How to call functions, for a template that does not describe tools itself."""
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        example = self.render_call("<function-name>", {"<argument>": "<value>"})
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listing}\n</tools>\n\n"
            "For each function call, return a JSON object with the function name and "
            f"arguments in this format:\n{example}"
        )

    def grammar(self, builder: GrammarBuilder, calls: dict[str, str], *, most: int) -> str:
        """The expression for a reply of 1 to ``most`` calls; ``calls`` maps function names to
        expressions for their arguments."""
        alternatives: list[str] = []
        for name, args in calls.items():
            head = json.dumps({"name": name}, ensure_ascii=False)[:-1]
            key = json.dumps(self.arguments_key)
            alternatives.append(f'{literal(head + ", " + key + ": ")} {args} "}}"')
        one = builder.rule("tool-call", " | ".join(alternatives))
        if self.tags is not None:
            opening, closing = literal(self.tags[0]), literal(self.tags[1])
            one = builder.rule("tagged-call", f"{opening} {one} {closing}")
        return f"{one} ({literal(self.separator)} {one}){{0,{most - 1}}}" if most > 1 else one


class HermesParser(ToolCallParser):
    """Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``."""

    name = "hermes"
    markers = ("<tool_call>",)


class Llama3JsonParser(ToolCallParser):
    """Llama 3.x: the reply is ``{"name": ..., "parameters": {...}}``, maybe after
    ``<|python_tag|>``, several separated by ``;``."""

    name = "llama3_json"
    markers = ("<|python_tag|>",)
    tags = None
    bare_starts = ("<|python_tag|>", "{", "[")
    arguments_key = "parameters"
    separator = "; "


class GenericParser(ToolCallParser):
    """The fallback: tagged calls anywhere, or a reply that is nothing but call JSON."""

    name = "generic"
    bare_starts = ("{", "[", "```")


DEFAULT_PARSERS: tuple[type[ToolCallParser], ...] = (
    HermesParser,
    Llama3JsonParser,
    GenericParser,
)


class ToolParserRegistry:
    """Tool-call formats by name; :meth:`for_template` picks one for a chat template."""

    def __init__(
        self, parsers: Iterable[type[ToolCallParser]] = DEFAULT_PARSERS, default: str = "generic"
    ) -> None:
        self._parsers: dict[str, type[ToolCallParser]] = {}
        for parser in parsers:
            self.register(parser)
        self._default = default

    def register(self, parser: type[ToolCallParser]) -> None:
        self._parsers[parser.name] = parser

    def get(self, name: str) -> type[ToolCallParser]:
        return self._parsers[name]

    def for_template(self, template: str | None, *, native: bool) -> type[ToolCallParser]:
        """The format ``template`` was written for. A template that does not render tools
        is told about them by :meth:`ToolCallParser.instructions` of the default format."""
        if native and template:
            for parser in self._parsers.values():
                if any(marker in template for marker in parser.markers):
                    return parser
        return self._parsers[self._default]
