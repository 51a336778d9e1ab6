"""OpenAI's /v1/embeddings request and response shapes.

The request validates what needs no model (shapes, empty inputs, how many); the service checks
the rest (token ids, lengths, `dimensions`) against the model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from helixflow.api.openai.protocol import invalid, unpaired_surrogate

MAX_EMBEDDING_INPUTS = 2048
"""OpenAI's limit on inputs in one request."""

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: EmbeddingInput = Field(
        description="Text or tokens to embed: a string, a list of strings, a token array or a "
        f"list of token arrays; at most {MAX_EMBEDDING_INPUTS} inputs, none empty."
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float",
        description="`base64`: each vector as the base64 of its little-endian float32 bytes.",
    )
    dimensions: int | None = Field(
        default=None,
        ge=1,
        description="Cut vectors to this size (models configured with `matryoshka_dims`).",
    )
    user: str | None = Field(default=None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _check_unicode(cls, data: Any) -> Any:
        path = unpaired_surrogate(data) if isinstance(data, dict) else None
        if path is not None:
            raise invalid(path, "the text is not valid Unicode (it holds an unpaired surrogate)")
        return data

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        """Name the input at fault (``input[3]``) rather than pydantic's union members."""
        if isinstance(value, str):
            if not value:
                raise invalid("", "the input must not be an empty string")
            return value
        if not isinstance(value, list):
            raise invalid("", "expected a string, an array of strings or of token ids")
        if not value:
            raise invalid("", "the input must not be an empty list")
        if all(_is_token(item) for item in value):
            return value  # one token array
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise invalid(
                "", f"at most {MAX_EMBEDDING_INPUTS} inputs per request; got {len(value)}"
            )
        texts = isinstance(value[0], str)
        for i, item in enumerate(value):
            if texts and not isinstance(item, str):
                raise invalid(f"[{i}]", f"input {i} must be a string like input 0")
            if not texts and not (isinstance(item, list) and all(map(_is_token, item))):
                raise invalid(f"[{i}]", f"input {i} must be an array of token ids")
            if not item:
                kind = "string" if texts else "token array"
                raise invalid(f"[{i}]", f"input {i} is an empty {kind}")
        return value

    @property
    def inputs(self) -> list[str | list[int]]:
        """The inputs one by one (a lone string or token array is one input)."""
        raw = self.input
        if isinstance(raw, str):
            return [raw]
        if all(isinstance(item, int) for item in raw):
            return [[t for t in raw if isinstance(t, int)]]
        return [item for item in raw if isinstance(item, str | list)]

    def param_of(self, index: int) -> str:
        """How an error names input ``index``: `input` alone, else `input[i]`."""
        raw = self.input
        alone = isinstance(raw, str) or all(isinstance(item, int) for item in raw)
        return "input" if alone else f"input[{index}]"


def _is_token(value: Any) -> bool:
    return type(value) is int


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="The vector, or with `encoding_format: base64` its little-endian float32 "
        "bytes in base64."
    )


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
