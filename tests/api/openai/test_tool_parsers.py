"""Tool-call parsers on sample model outputs, the registry, and how tool turns reach a chat
template that does not render tools itself. No server needed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from helixflow.api.openai.tool_parsers import (
    GenericParser,
    HermesParser,
    Llama3JsonParser,
    ParsedCall,
    ParsedOutput,
    ToolCallParser,
    ToolParserRegistry,
    collect,
)
from helixflow.api.openai.tools import NO_PARAMETERS, ToolPlan, ToolSpec, conversation
from helixflow.engine.chat_template import (
    CHATML_TEMPLATE,
    GEMMA_TEMPLATE,
    ChatTemplate,
    renders_tools,
)

KNOWN = ["get_weather", "get_time"]


def call(name: str, **arguments: Any) -> ParsedCall:
    return ParsedCall(name, json.dumps(arguments, separators=(",", ":")))


# (parser, model output, expected content, expected calls)
SAMPLES: list[tuple[type[ToolCallParser], str, str | None, list[ParsedCall]]] = [
    (
        HermesParser,
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        None,
        [call("get_weather", city="Paris")],
    ),
    (
        HermesParser,
        'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
        '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {"tz": "CET"}}</tool_call>',
        "Let me check.",
        [call("get_weather", city="Oslo"), call("get_time", tz="CET")],
    ),
    (
        HermesParser,
        '<tool_call>{"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}</tool_call>',
        None,
        [call("get_time", tz="UTC")],
    ),
    (  # cut off after a complete call: the call stands
        HermesParser,
        '<tool_call>\n{"name": "get_time", "arguments": {}}',
        None,
        [call("get_time")],
    ),
    (  # an unknown function is not a call
        HermesParser,
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
        [],
    ),
    (  # broken JSON is left as text, exactly
        HermesParser,
        'Sure <tool_call>{"name": "get_time", "arguments": {</tool_call> done',
        'Sure <tool_call>{"name": "get_time", "arguments": {</tool_call> done',
        [],
    ),
    (HermesParser, "The weather is fine.", "The weather is fine.", []),
    (  # text after the calls (or a call cut short) is dropped
        HermesParser,
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n<tool_call>{"name',
        None,
        [call("get_time")],
    ),
    (
        Llama3JsonParser,
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}; '
        '{"name": "get_time", "parameters": {}}',
        None,
        [call("get_weather", city="Rome"), call("get_time")],
    ),
    (
        Llama3JsonParser,
        '{"name": "get_weather", "parameters": {"city": "Rome"}}',
        None,
        [call("get_weather", city="Rome")],
    ),
    (Llama3JsonParser, '{"city": "Rome"}', '{"city": "Rome"}', []),
    (Llama3JsonParser, "It is sunny in Rome.", "It is sunny in Rome.", []),
    (
        GenericParser,
        '```json\n[{"name": "get_weather", "arguments": {"city": "Lima"}}]\n```',
        None,
        [call("get_weather", city="Lima")],
    ),
    (
        GenericParser,
        '{"name": "get_time", "arguments": {"tz": "PST"}}',
        None,
        [call("get_time", tz="PST")],
    ),
    (
        GenericParser,
        'Checking. <tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
        "Checking.",
        [call("get_time")],
    ),
    (GenericParser, "  {not json at all", "  {not json at all", []),
]


@pytest.mark.parametrize(
    ("parser", "output", "content", "calls"),
    SAMPLES,
    ids=[f"{p.name}-{i}" for i, (p, *_) in enumerate(SAMPLES)],
)
def test_parse_sample_output(
    parser: type[ToolCallParser], output: str, content: str | None, calls: list[ParsedCall]
) -> None:
    assert parser(KNOWN).parse(output) == ParsedOutput(content, calls)


@pytest.mark.parametrize(
    ("parser", "output"),
    [(p, o) for p, o, *_ in SAMPLES],
    ids=[str(i) for i in range(len(SAMPLES))],
)
def test_streaming_in_small_pieces_gives_the_same_result(
    parser: type[ToolCallParser], output: str
) -> None:
    whole = parser(KNOWN).parse(output)
    stream = parser(KNOWN).stream()
    events = []
    for i in range(0, len(output), 3):
        events.extend(stream.feed(output[i : i + 3]))
    events.extend(stream.finish())
    assert collect(events) == whole


def test_content_streams_before_the_call_and_only_a_possible_tag_is_held_back() -> None:
    stream = HermesParser(KNOWN).stream()
    assert stream.feed("Let me ") == ["Let me "]
    assert stream.feed("check <tool_") == ["check "]  # "<tool_" may start a tag
    assert stream.feed('call>{"name": "get_time", ') == []
    assert stream.feed('"arguments": {}}</tool_call>') == [call("get_time")]
    assert stream.finish() == []


def test_a_reply_that_may_be_bare_json_is_held_to_the_end() -> None:
    stream = GenericParser(KNOWN).stream()
    assert stream.feed('{"name": "get_time",') == []
    assert stream.feed(' "arguments": {}}') == []
    assert stream.finish() == [call("get_time")]
    plain = GenericParser(KNOWN).stream()
    assert plain.feed("Hello") == ["Hello"]


def test_at_most_max_calls() -> None:
    output = (
        '<tool_call>{"name": "get_time", "arguments": {"tz": "A"}}</tool_call>'
        '<tool_call>{"name": "get_time", "arguments": {"tz": "B"}}</tool_call>'
    )
    assert HermesParser(KNOWN, max_calls=1).parse(output).calls == [call("get_time", tz="A")]


def test_registry_picks_the_format_of_the_template() -> None:
    registry = ToolParserRegistry()
    qwen_like = "{% for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>"
    llama_like = "{% if tools %}<|python_tag|>{% endif %}"
    assert registry.for_template(qwen_like, native=True) is HermesParser
    assert registry.for_template(llama_like, native=True) is Llama3JsonParser
    assert registry.for_template(CHATML_TEMPLATE, native=True) is GenericParser
    assert registry.for_template(qwen_like, native=False) is GenericParser
    assert registry.for_template(None, native=False) is GenericParser

    class Mistral(ToolCallParser):
        name = "mistral"
        markers = ("[TOOL_CALLS]",)
        tags = ("[TOOL_CALLS]", "</s>")

    registry.register(Mistral)
    assert registry.get("mistral") is Mistral
    assert registry.for_template("... [TOOL_CALLS] ...", native=True) is Mistral


def test_renders_tools_probes_the_template() -> None:
    assert renders_tools("{% for t in tools %}{{ t.function.name }}{% endfor %}hi")
    assert not renders_tools(CHATML_TEMPLATE)
    assert not renders_tools(GEMMA_TEMPLATE)
    assert not renders_tools("{{ raise_exception('no') }}")


WEATHER = ToolSpec(
    "get_weather",
    "Weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "tools[0].function.parameters",
)
CLOCK = ToolSpec("get_time", None, NO_PARAMETERS, "tools[1].function.parameters")
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and the time?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
]


def test_template_without_tools_gets_them_in_the_system_message() -> None:
    plan = ToolPlan((WEATHER, CLOCK), "required")
    convo = conversation(HISTORY, plan, GenericParser(KNOWN), native=False)
    assert convo.tools is None
    roles = [m["role"] for m in convo.messages]
    assert roles == ["system", "user", "assistant", "user"]
    system = convo.messages[0]["content"]
    assert system.startswith("Be brief.\n\n# Tools")
    assert '"name": "get_weather"' in system
    assert "<tool_call>" in system
    assert "You must call at least one" in system
    assistant = convo.messages[2]["content"]
    assert assistant == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    results = convo.messages[3]["content"]
    assert results == (
        "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nnoon\n</tool_response>"
    )
    for source in (CHATML_TEMPLATE, GEMMA_TEMPLATE):
        text = ChatTemplate(source, bos_token="", eos_token="").render(convo.messages)
        assert "get_weather" in text
        assert "<tool_response>\nsunny" in text


def test_template_with_tools_gets_them_natively() -> None:
    plan = ToolPlan((WEATHER, CLOCK), "auto")
    convo = conversation(HISTORY, plan, HermesParser(KNOWN), native=True)
    assert convo.tools is not None
    assert [t["function"]["name"] for t in convo.tools] == ["get_weather", "get_time"]
    assert convo.messages[0] == HISTORY[0]
    arguments = convo.messages[2]["tool_calls"][0]["function"]["arguments"]
    assert arguments == {"city": "Paris"}  # templates apply `tojson` to arguments
    assert [m["role"] for m in convo.messages] == ["system", "user", "assistant", "tool", "tool"]


def test_no_tools_offered_with_tool_choice_none() -> None:
    plan = ToolPlan((WEATHER,), "none")
    convo = conversation(HISTORY[:2], plan, GenericParser(()), native=False)
    assert convo.messages == HISTORY[:2]
    native = conversation(HISTORY[:2], plan, GenericParser(()), native=True)
    assert native.tools is None


def test_deprecated_function_turns_become_tool_turns() -> None:
    legacy = [
        {"role": "user", "content": "Time?"},
        {
            "role": "assistant",
            "content": "",
            "function_call": {"name": "get_time", "arguments": "{}"},
        },
        {"role": "function", "name": "get_time", "content": "noon"},
    ]
    plan = ToolPlan((CLOCK,), "auto", parallel=False, legacy=True)
    convo = conversation(legacy, plan, GenericParser(["get_time"]), native=False)
    system, user, assistant, result = convo.messages
    assert "Call at most one function" in system["content"]
    assert user == legacy[0]
    assert assistant["content"].startswith('<tool_call>\n{"name": "get_time"')
    assert result == {"role": "user", "content": "<tool_response>\nnoon\n</tool_response>"}
