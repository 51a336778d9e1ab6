"""What each kind of request needs from a target: capabilities, size, and what binds it."""

from __future__ import annotations

from fastapi import Request

from helixflow.api.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ImageContentPart,
)
from helixflow.api.openai.protocol_embeddings import EmbeddingRequest
from helixflow.api.openai.sessions import session_id
from helixflow.config import Settings
from helixflow.errors import InvalidRequestError
from helixflow.router.router import RequestNeeds

CATEGORY_HEADER = "x-helixflow-category"
AGENT_HEADER = "x-agent-id"
CHARS_PER_TOKEN = 4
"""A rough prompt size before tokenization; only used to skip targets that cannot fit it."""


def client_headers(request: Request) -> tuple[str | None, str | None]:
    """(task category, agent id) from the request headers."""
    headers = request.headers
    category = headers.get(CATEGORY_HEADER, "").strip().lower() or None
    if category is not None and len(category) > 64:
        raise InvalidRequestError(
            f"The {CATEGORY_HEADER} header must be at most 64 characters.",
            param=CATEGORY_HEADER,
            code="invalid_header",
        )
    agent = headers.get(AGENT_HEADER, "").strip() or None
    return category, agent


def _estimate(chars: int) -> int:
    return chars // CHARS_PER_TOKEN


def chat_needs(body: ChatCompletionRequest, request: Request, settings: Settings) -> RequestNeeds:
    capabilities = {"chat"}
    if body.tools or body.functions:
        capabilities.add("tools")
    if body.response_format is not None and body.response_format.type != "text":
        capabilities.add("json")
    texts: list[str] = []
    for message in body.messages:
        content = message.content
        if isinstance(content, str):
            texts.append(content)
        elif content:
            for part in content:
                if isinstance(part, ImageContentPart):
                    capabilities.add("vision")
                text = getattr(part, "text", None)
                if isinstance(text, str):
                    texts.append(text)
    prompt = "\n".join(texts)
    category, agent = client_headers(request)
    return RequestNeeds(
        capabilities=frozenset(capabilities),
        prompt_tokens=_estimate(len(prompt)),
        max_tokens=body.token_limit,
        category=category,
        session=session_id(request, settings.kv_cache, body.user),
        prefix=prompt,
        agent=agent,
    )


def completion_needs(body: CompletionRequest, request: Request, settings: Settings) -> RequestNeeds:
    prompt = body.prompt
    if isinstance(prompt, str):
        text, tokens = prompt, _estimate(len(prompt))
    elif prompt and isinstance(prompt[0], str):
        text = "\n".join(p for p in prompt if isinstance(p, str))
        tokens = _estimate(len(text))
    else:
        text, tokens = "", sum(len(p) if isinstance(p, list) else 1 for p in prompt)
    category, agent = client_headers(request)
    return RequestNeeds(
        capabilities=frozenset({"completions"}),
        prompt_tokens=tokens,
        max_tokens=body.max_tokens,
        category=category,
        session=session_id(request, settings.kv_cache, body.user),
        prefix=text or None,
        agent=agent,
    )


def embedding_needs(body: EmbeddingRequest, request: Request) -> RequestNeeds:
    category, agent = client_headers(request)
    return RequestNeeds(capabilities=frozenset({"embeddings"}), category=category, agent=agent)
