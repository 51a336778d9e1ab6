"""Function calling: what a request offers, how it reaches the prompt, and what is forced.

* :func:`tool_plan` reads ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` (or the
  deprecated ``functions`` / ``function_call``, mapped onto them) and checks them.
* :func:`conversation` writes the messages for the chat template. A template that renders
  ``tools`` gets them as they are; for one that does not (SmolLM2's, Gemma's), the tools and
  the call format are described in the system message, earlier calls are written out in that
  format and tool results become ``<tool_response>`` user turns: one place, for every model.
* :func:`output_grammar` builds the grammar for ``tool_choice`` ``required`` or a named
  function (calls whose arguments match the functions' schemas) and for ``response_format``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from helixflow.api.openai.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionDefinition,
    FunctionName,
    NamedToolChoice,
    ResponseFormat,
)
from helixflow.api.openai.structured import check_schema, content_expression, schema_expression
from helixflow.api.openai.tool_parsers import ToolCallParser
from helixflow.engine.grammar import GrammarBuilder
from helixflow.errors import InvalidRequestError

ToolMode = Literal["none", "auto", "required", "named"]

NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
MAX_PARALLEL_CALLS = 8
"""Most calls in one reply when they are forced by a grammar: a small model may otherwise
repeat calls until ``max_tokens``."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One function on offer."""

    name: str
    description: str | None
    parameters: dict[str, Any]
    param: str
    """Where its schema is in the request, for errors (``tools[0].function.parameters``)."""

    def definition(self) -> dict[str, Any]:
        """The OpenAI tool object, as chat templates expect ``tools``."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolPlan:
    tools: tuple[ToolSpec, ...]
    mode: ToolMode
    forced: str | None = None
    parallel: bool = True
    legacy: bool = False
    """Asked with ``functions``: answered with ``function_call`` (one call at most)."""

    @property
    def constrained(self) -> bool:
        """Generation must produce calls (``required`` or a named function)."""
        return self.mode in ("required", "named")

    @property
    def callable(self) -> tuple[ToolSpec, ...]:
        if self.mode == "none":
            return ()
        if self.forced is not None:
            return tuple(t for t in self.tools if t.name == self.forced)
        return self.tools

    @property
    def max_calls(self) -> int | None:
        return None if self.parallel and self.mode != "named" else 1


def tool_plan(request: ChatCompletionRequest) -> ToolPlan | None:
    """The request's tools and tool choice, checked; None when it offers none."""
    if request.functions:
        return _plan(
            [(f, f"functions[{i}]") for i, f in enumerate(request.functions)],
            request.function_call,
            choice_param="function_call",
            parallel=False,
            legacy=True,
        )
    if request.tools:
        return _plan(
            [(t.function, f"tools[{i}].function") for i, t in enumerate(request.tools)],
            request.tool_choice,
            choice_param="tool_choice",
            parallel=request.parallel_tool_calls is not False,
            legacy=False,
        )
    return None


def _plan(
    functions: list[tuple[FunctionDefinition, str]],
    choice: Literal["none", "auto", "required"] | NamedToolChoice | FunctionName | None,
    *,
    choice_param: str,
    parallel: bool,
    legacy: bool,
) -> ToolPlan:
    specs: list[ToolSpec] = []
    for function, where in functions:
        if any(s.name == function.name for s in specs):
            raise InvalidRequestError(
                f"Two functions are named {function.name!r}; function names must be unique.",
                param=f"{where}.name",
                code="duplicate_function_name",
            )
        parameters = function.parameters if function.parameters is not None else NO_PARAMETERS
        check_schema(parameters, f"{where}.parameters")
        specs.append(
            ToolSpec(function.name, function.description, parameters, f"{where}.parameters")
        )
    forced: str | None = None
    if isinstance(choice, NamedToolChoice):
        forced = choice.function.name
    elif isinstance(choice, FunctionName):
        forced = choice.name
    if forced is not None and all(s.name != forced for s in specs):
        offered = ", ".join(repr(s.name) for s in specs)
        raise InvalidRequestError(
            f"{choice_param} names the function {forced!r}, which is not among the tools "
            f"offered ({offered}).",
            param=choice_param,
            code="unknown_function",
        )
    mode: ToolMode = (
        "named" if forced is not None else choice if isinstance(choice, str) else "auto"
    )
    return ToolPlan(tuple(specs), mode, forced, parallel, legacy)


def check_tool_results(messages: Sequence[ChatMessage]) -> None:
    """Every ``tool`` message must answer a call an earlier assistant message made."""
    calls: set[str] = set()
    for i, message in enumerate(messages):
        if message.role == "assistant" and message.tool_calls:
            calls.update(call.id for call in message.tool_calls)
        elif message.role == "tool" and message.tool_call_id not in calls:
            raise InvalidRequestError(
                f"messages[{i}] is the result of tool call {message.tool_call_id!r}, but no "
                "earlier assistant message made a call with that id.",
                param=f"messages[{i}].tool_call_id",
                code="unknown_tool_call_id",
            )


@dataclass(frozen=True, slots=True)
class Conversation:
    """What the chat template renders."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None


def conversation(
    messages: Sequence[dict[str, Any]],
    plan: ToolPlan | None,
    parser: ToolCallParser,
    *,
    native: bool,
) -> Conversation:
    """``messages`` (template dicts) with tool turns in the form the template can render;
    ``native``: the template renders ``tools`` itself."""
    turns = [_normalized(m, i) for i, m in enumerate(messages)]
    offered = [t.definition() for t in plan.tools] if plan and plan.mode != "none" else []
    if native:
        return Conversation(turns, offered or None)
    turns = _written_out(turns, parser)
    if offered:
        assert plan is not None
        turns = _with_system_text(turns, parser.instructions(offered) + _choice_hint(plan))
    return Conversation(turns, None)


def _normalized(message: dict[str, Any], index: int) -> dict[str, Any]:
    """Deprecated function turns as tool turns; call arguments as objects (templates apply
    ``tojson`` to them)."""
    out = dict(message)
    legacy_call = out.pop("function_call", None)
    if legacy_call is not None and not out.get("tool_calls"):
        out["tool_calls"] = [{"id": f"call_{index}", "type": "function", "function": legacy_call}]
    if out["role"] == "function":
        out["role"] = "tool"
    if out.get("tool_calls"):
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _arguments(call["function"])}}
            for call in out["tool_calls"]
        ]
    return out


def _arguments(function: dict[str, Any]) -> Any:
    text = function.get("arguments", "")
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


def _written_out(turns: list[dict[str, Any]], parser: ToolCallParser) -> list[dict[str, Any]]:
    """Calls as text in the parser's format; results as ``<tool_response>`` user turns
    (consecutive results share one turn, so user and assistant turns still alternate)."""
    out: list[dict[str, Any]] = []
    results_open = False
    for turn in turns:
        if turn["role"] == "tool":
            block = f"<tool_response>\n{turn['content']}\n</tool_response>"
            if results_open:
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + block}
            else:
                out.append({"role": "user", "content": block})
            results_open = True
            continue
        results_open = False
        if turn["role"] == "assistant" and turn.get("tool_calls"):
            calls = "\n".join(
                parser.render_call(c["function"]["name"], c["function"]["arguments"])
                for c in turn["tool_calls"]
            )
            text = turn.get("content") or ""
            turn = {"role": "assistant", "content": f"{text}\n{calls}" if text else calls}
        out.append(turn)
    return out


def _with_system_text(turns: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if turns and turns[0]["role"] in ("system", "developer"):
        first = turns[0]
        content = f"{first['content']}\n\n{text}" if first["content"] else text
        return [{**first, "content": content}, *turns[1:]]
    return [{"role": "system", "content": text}, *turns]


def _choice_hint(plan: ToolPlan) -> str:
    if plan.forced is not None:
        return f"\n\nYou must call the function {plan.forced}."
    if plan.mode == "required":
        hint = "\n\nYou must call at least one of these functions."
        return hint if plan.parallel else hint + " Call only one."
    return "" if plan.parallel else "\n\nCall at most one function at a time."


def output_grammar(
    response_format: ResponseFormat | None, plan: ToolPlan | None, parser: ToolCallParser
) -> str | None:
    """The grammar generation must follow, or None for free text: calls only (``required``,
    a named function); the ``response_format`` (or, with ``auto``, it or calls)."""
    builder = GrammarBuilder()
    calls: str | None = None
    if plan is not None and plan.callable:
        wants_format = response_format is not None and response_format.type != "text"
        if plan.constrained or wants_format:
            arguments = {
                t.name: schema_expression(builder, t.parameters, f"{t.name}-arguments", t.param)
                for t in plan.callable
            }
            calls = parser.grammar(builder, arguments, most=plan.max_calls or MAX_PARALLEL_CALLS)
        if plan.constrained:
            assert calls is not None
            return builder.build(calls)
    content = content_expression(builder, response_format)
    if content is None:
        return None
    return builder.build(f"{content} | {calls}" if calls else content)
