"""API keys: their format, generation and the keyed hash they are looked up by.

A key reads ``hf-`` followed by 43 URL-safe base64 characters (32 random bytes), e.g.
``hf-2dVnX0...``: recognisable in logs and by secret scanners. The database keeps only
``key_hash(derive(secret, KEY_HASH_PURPOSE), key)``, an HMAC-SHA256 (a fast keyed hash is
right here: the key is random, so there is nothing to brute-force, and the server secret keeps
a stolen table useless), and the key's first :data:`PREFIX_CHARS` characters, to recognise it
in a list.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "hf-"
RANDOM_BYTES = 32
RANDOM_CHARS = 43
"""URL-safe base64 of 32 bytes, without padding."""
PREFIX_CHARS = 12
"""How much of a key is stored to recognise it (``hf-`` and 9 random characters)."""
KEY_HASH_PURPOSE = "api-key-hash"
"""The :func:`helixflow.security.secret.derive` purpose of the key hashing API keys."""

_KEY = re.compile(rf"{re.escape(KEY_PREFIX)}[A-Za-z0-9_-]{{{RANDOM_CHARS}}}")


def generate() -> tuple[str, str]:
    """A new key and its displayable prefix: ``(plaintext, prefix)``."""
    while True:
        body = secrets.token_urlsafe(RANDOM_BYTES)
        if len(body) == RANDOM_CHARS:  # always, for 32 bytes; kept as a guard
            plaintext = KEY_PREFIX + body
            return plaintext, plaintext[:PREFIX_CHARS]


def key_hash(secret_key: bytes, plaintext: str) -> str:
    """The lookup key of ``plaintext``: hex HMAC-SHA256 under ``secret_key`` (64 chars)."""
    return hmac.new(secret_key, plaintext.encode(), hashlib.sha256).hexdigest()


def looks_like_key(text: str) -> bool:
    """True when ``text`` has the shape of a HelixFlow key (says nothing of its validity)."""
    return _KEY.fullmatch(text) is not None


def new_key_id() -> str:
    """``key_<16 hex>``: the key's public id (``inference_requests.api_key_id``)."""
    return f"key_{secrets.token_hex(8)}"


def new_user_id() -> str:
    """``usr_<16 hex>``: a user's id (``inference_requests.user_id``)."""
    return f"usr_{secrets.token_hex(8)}"
