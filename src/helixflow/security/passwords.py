"""Passwords: argon2id hashes (argon2-cffi), and what a password must be.

:meth:`Passwords.verify` takes as long for an unknown user (or one without a password) as for
a known one, by checking the password against a dummy hash, so that timing does not tell
which user names exist. Hashing is CPU work of tens of milliseconds: async callers run it in a
thread (:meth:`Passwords.hash_async`, :meth:`Passwords.verify_async`).
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from helixflow.errors import InvalidRequestError

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
"""Longer passwords are refused: hashing one costs as much as anyone wants it to."""


def check_password_policy(password: str, *, param: str = "password") -> None:
    """Refuse a password that is too short or too long (400 ``invalid_password``)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidRequestError(
            f"The password must be at least {MIN_PASSWORD_CHARS} characters long.",
            param=param,
            code="invalid_password",
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidRequestError(
            f"The password must be at most {MAX_PASSWORD_CHARS} characters long.",
            param=param,
            code="invalid_password",
        )


class Passwords:
    """argon2id hashing with argon2-cffi's defaults (RFC 9106's low-memory profile), or
    cheaper parameters where a test asks for them."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

    @classmethod
    def fast_for_tests(cls) -> Passwords:
        """Minimal cost: for tests only (still argon2id, still salted)."""
        return cls(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """True when ``password`` matches ``stored``. With no stored hash (unknown user, a
        user without a password) the password is checked against a dummy hash all the same,
        and the answer is False."""
        if stored is None:
            self._check(self._dummy_hash(), password)
            return False
        return self._check(stored, password)

    def needs_rehash(self, stored: str) -> bool:
        """True when ``stored`` was made with other parameters than the current ones."""
        try:
            return self.hasher.check_needs_rehash(stored)
        except (InvalidHashError, ValueError):
            return True

    async def hash_async(self, password: str) -> str:
        return await asyncio.to_thread(self.hash, password)

    async def verify_async(self, stored: str | None, password: str) -> bool:
        return await asyncio.to_thread(self.verify, stored, password)

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy
