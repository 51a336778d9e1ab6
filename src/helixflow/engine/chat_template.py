"""Chat templates rendered with jinja2, as llama.cpp and transformers do.

The template comes from the GGUF metadata (``tokenizer.chat_template``) or a configured
override. It runs in jinja2's immutable sandbox with the helpers HF templates rely on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from helixflow.errors import EngineError, InvalidRequestError

# Used when a GGUF carries no template: the instruct format of its architecture, else ChatML.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

_ARCHITECTURE_TEMPLATES: dict[str, str] = {
    "gemma": GEMMA_TEMPLATE,
    "gemma2": GEMMA_TEMPLATE,
    "gemma3": GEMMA_TEMPLATE,
}


def fallback_template(architecture: str | None) -> str:
    """The template to use for a GGUF that carries none."""
    return _ARCHITECTURE_TEMPLATES.get(architecture or "", CHATML_TEMPLATE)


class TemplateRaisedError(InvalidRequestError):
    """The chat template itself rejected the conversation (``raise_exception``)."""


def _raise_exception(message: str) -> None:
    raise TemplateRaisedError(
        f"The model's chat template rejected the messages: {message}",
        param="messages",
        code="invalid_messages",
    )


def _tojson(
    value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False
) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def load_template_source(value: str) -> str:
    """A configured override is a file path when such a file exists, else inline text."""
    if "{" not in value and len(value) < 4096:
        path = Path(value).expanduser()
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return value


class ChatTemplate:
    """A compiled chat template plus the special tokens it may refer to."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        """Compiles ``source`` now, so a broken template stops the model from loading instead
        of failing its first request (jinja2's ``TemplateSyntaxError``)."""
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise EngineError(
                f"the chat template does not compile: {exc}", code="invalid_chat_template"
            ) from exc

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        try:
            return str(
                self._template.render(
                    messages=[dict(m) for m in messages],
                    tools=list(tools) if tools else None,
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self.bos_token,
                    eos_token=self.eos_token,
                )
            )
        except InvalidRequestError:
            raise
        except TemplateError as exc:
            raise InvalidRequestError(
                f"The conversation could not be rendered with the model's chat template: {exc}",
                param="messages",
                code="invalid_messages",
            ) from exc


_PROBE_FUNCTION = "helixflow_probe_function"


def renders_tools(source: str) -> bool:
    """Whether a template writes the ``tools`` it is given into the prompt. Many small models'
    templates ignore them; the API layer then describes the tools in a system message."""
    probe = {
        "type": "function",
        "function": {
            "name": _PROBE_FUNCTION,
            "description": "Probe.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    try:
        template = ChatTemplate(source, bos_token="", eos_token="")
        text = template.render([{"role": "user", "content": "Hello"}], tools=[probe])
    except Exception:  # a template may fail in any way on input it was not written for
        return False
    return _PROBE_FUNCTION in text
