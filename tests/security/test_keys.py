"""API key format, generation and keyed hashes."""

from __future__ import annotations

import pytest

from helixflow.security.keys import (
    PREFIX_CHARS,
    generate,
    key_hash,
    looks_like_key,
    new_key_id,
    new_user_id,
)


def test_generate_gives_a_recognisable_key_and_its_prefix() -> None:
    plaintext, prefix = generate()
    assert plaintext.startswith("hf-")
    assert len(plaintext) == 46
    assert prefix == plaintext[:PREFIX_CHARS]
    assert len(prefix) <= 16  # the column's length
    assert looks_like_key(plaintext)


def test_keys_are_unique() -> None:
    keys = {generate()[0] for _ in range(200)}
    assert len(keys) == 200


def test_key_hash_is_a_keyed_hmac() -> None:
    plaintext, _ = generate()
    one = key_hash(b"k" * 32, plaintext)
    assert len(one) == 64
    int(one, 16)  # hex
    assert key_hash(b"k" * 32, plaintext) == one
    assert key_hash(b"j" * 32, plaintext) != one  # another secret, another hash
    assert plaintext not in one


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hf-",
        "sk-" + "a" * 43,
        "hf-" + "a" * 42,
        "hf-" + "a" * 44,
        "hf-" + "a" * 42 + "!",
        " hf-" + "a" * 43,
        "hf-" + "a" * 43 + "\n",
    ],
)
def test_looks_like_key_refuses(text: str) -> None:
    assert not looks_like_key(text)


def test_ids() -> None:
    assert new_key_id().startswith("key_")
    assert new_user_id().startswith("usr_")
    assert new_key_id() != new_key_id()
    assert len(new_key_id()) <= 64
