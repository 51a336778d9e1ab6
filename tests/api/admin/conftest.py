"""Admin API tests: ``harness.py``'s checks get pytest's detailed assertion messages; the keys
and users API's fixtures (an account service on SQLite, a client acting as a chosen principal,
an admin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from helixflow.security.accounts import AccountService
from helixflow.security.identity import UserRecord
from helixflow.security.passwords import Passwords
from helixflow.security_config import SecurityConfig
from helixflow.store.database import Database
from helixflow.store.migrate import Migrator

pytest.register_assert_rewrite("tests.api.admin.harness")

# After the registration, so that the harness's assertions are rewritten.
from tests.api.admin.harness import (  # noqa: E402
    Acting,
    accounts_app,
    add_user,
    asgi_client,
    user_principal,
)


@pytest.fixture
async def accounts(tmp_path: Path) -> AsyncIterator[AccountService]:
    """An account service over a fresh, migrated SQLite database (``accounts.database``)."""
    database = Database(f"sqlite:///{tmp_path / 'helixflow.db'}")
    await Migrator(database).upgrade()
    service = AccountService(
        database, b"s" * 32, SecurityConfig(), passwords=Passwords.fast_for_tests()
    )
    try:
        yield service
    finally:
        try:
            await service.close()
        finally:
            await database.dispose()


@pytest.fixture
def acting() -> Acting:
    """Who ``client``'s requests act as; nobody (authentication off) until a test says."""
    return Acting()


@pytest.fixture
async def client(accounts: AccountService, acting: Acting) -> AsyncIterator[httpx.AsyncClient]:
    """The keys and users API over ``accounts`` (a module's own ``client`` takes precedence)."""
    async with asgi_client(accounts_app(accounts, acting)) as http:
        yield http


@pytest.fixture
async def admin(accounts: AccountService, acting: Acting) -> UserRecord:
    """An admin user, whom ``client`` acts as from then on."""
    user = await add_user(accounts, "root", "admin")
    acting.principal = user_principal(user)
    return user
