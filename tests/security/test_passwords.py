"""argon2id password hashes: verify, refuse, rehash, and the dummy check for unknown users."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from helixflow.errors import InvalidRequestError
from helixflow.security.passwords import Passwords, check_password_policy


@pytest.fixture
def passwords() -> Passwords:
    return Passwords.fast_for_tests()


def test_hash_is_argon2id_salted_and_verifies(passwords: Passwords) -> None:
    first = passwords.hash("correct horse")
    assert first.startswith("$argon2id$")
    assert passwords.hash("correct horse") != first  # salted
    assert passwords.verify(first, "correct horse")
    assert not passwords.verify(first, "wrong horse")


def test_no_stored_hash_checks_a_dummy_and_fails(passwords: Passwords) -> None:
    assert not passwords.verify(None, "anything at all")
    assert passwords._dummy is not None  # the work was done all the same
    assert not passwords.verify(None, "")


def test_a_malformed_hash_fails_instead_of_raising(passwords: Passwords) -> None:
    assert not passwords.verify("not-a-hash", "correct horse")
    assert passwords.needs_rehash("not-a-hash")


def test_needs_rehash_when_the_parameters_change(passwords: Passwords) -> None:
    cheap = passwords.hash("correct horse")
    assert not passwords.needs_rehash(cheap)
    stronger = Passwords(PasswordHasher(time_cost=2, memory_cost=16, parallelism=1))
    assert stronger.needs_rehash(cheap)
    assert stronger.verify(cheap, "correct horse")  # old hashes still verify


async def test_async_variants(passwords: Passwords) -> None:
    stored = await passwords.hash_async("correct horse")
    assert await passwords.verify_async(stored, "correct horse")
    assert not await passwords.verify_async(None, "correct horse")


@pytest.mark.parametrize("password", ["", "short", "x" * 1025])
def test_policy_refuses(password: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_password_policy(password)
    assert (info.value.param, info.value.code) == ("password", "invalid_password")


def test_policy_accepts() -> None:
    check_password_policy("eight ch")
    check_password_policy("x" * 1024)
