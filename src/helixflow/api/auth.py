"""Role checks for endpoints: ``Depends(require("admin"))`` and the current principal.

The auth middleware (``security/middleware.py``) resolves each request's principal once and
puts it in ``request.state.principal``; while authentication is off it is ``ANONYMOUS`` (an
admin), so the checks below pass.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from helixflow.errors import AuthenticationError, PermissionDeniedError
from helixflow.security.identity import ANONYMOUS, Principal, Role

PRINCIPAL_KEY = "principal"


def principal_of(request: Request) -> Principal:
    """The request's principal; ``ANONYMOUS`` when no middleware set one (auth off)."""
    principal = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else ANONYMOUS


async def current_principal(request: Request) -> Principal:
    return principal_of(request)


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency admitting principals with at least ``role`` (403 otherwise)."""

    async def check(request: Request) -> Principal:
        principal = principal_of(request)
        if principal.kind == "anonymous" and principal is not ANONYMOUS:
            raise AuthenticationError("Authentication required.")
        if not principal.has_role(role):
            raise PermissionDeniedError(
                f"This needs the {role} role; {principal.name} has {principal.role}.",
                code="insufficient_role",
            )
        return principal

    return check
