"""The security services of one process, built once in the app's lifespan.

Accounts (users, API keys, audit), dashboard sessions (JWTs), the limiter, and the switch that
turns authentication on as soon as the first credential exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from helixflow.config import Settings
from helixflow.errors import ConfigurationError
from helixflow.security.accounts import AccountService
from helixflow.security.limits import Limiter, build_limiter
from helixflow.security.middleware import Authenticator, AuthSwitch
from helixflow.security.secret import load_secret
from helixflow.security.tokens import TokenService
from helixflow.store.database import Database

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SecurityRuntime:
    accounts: AccountService
    tokens: TokenService
    limiter: Limiter
    switch: AuthSwitch
    authenticator: Authenticator

    @classmethod
    async def open(cls, settings: Settings, database: Database) -> SecurityRuntime:
        config = settings.security
        try:
            secret = load_secret(settings)
            config.bootstrap_admin.password()
        except ValueError as exc:
            raise ConfigurationError(f"security: {exc}") from exc
        accounts = AccountService(database, secret, config)
        await accounts.ensure_bootstrap_admin()
        tokens = TokenService(database, secret, config, users=accounts)
        await tokens.start()
        switch = AuthSwitch(config.auth, accounts.any_credentials)
        accounts.on_credentials_created(switch.credentials_created)
        await switch.start()
        log.info(
            "authentication %s (security.auth: %s)",
            "required" if switch.enforced else "off until the first key or user exists",
            config.auth,
        )
        return cls(
            accounts,
            tokens,
            build_limiter(settings, database),
            switch,
            Authenticator(accounts, tokens),
        )

    async def close(self) -> None:
        await self.switch.stop()
        await self.tokens.stop()
        await self.limiter.aclose()
        await self.accounts.close()
