"""One hierarchy of typed errors, rendered in one place as OpenAI's error envelope.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``
"""

from __future__ import annotations

from typing import Any


class HelixFlowError(Exception):
    """Base class: every error a client may see carries its HTTP status and envelope fields."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.error_type, self.param, self.code)


def error_envelope(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class InvalidRequestError(HelixFlowError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class AuthenticationError(HelixFlowError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(HelixFlowError):
    status_code = 403
    error_type = "permission_error"


class NotFoundError(HelixFlowError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"

    def __init__(self, model: str, *, param: str | None = "model") -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.", param=param
        )


class MethodNotAllowedError(HelixFlowError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLargeError(HelixFlowError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaTypeError(HelixFlowError):
    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimitError(HelixFlowError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(
        self, message: str, *, retry_after: int, code: str = "rate_limit_exceeded"
    ) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class QueueFullError(RateLimitError):
    """Every slot is busy and the waiting queue is at its limit."""

    def __init__(self, model: str, queued: int, *, retry_after: int) -> None:
        super().__init__(
            f"Model '{model}' is at capacity ({queued} requests already queued); "
            f"retry after {retry_after}s.",
            retry_after=retry_after,
            code="queue_full",
        )


class BudgetExceededError(HelixFlowError):
    """A key's or user's spend reached its budget for the period (OpenAI's quota error: not
    worth retrying before the period resets)."""

    status_code = 429
    error_type = "insufficient_quota"
    default_code = "budget_exceeded"


class ClientDisconnectedError(HelixFlowError):
    """The client went away; nobody will read this reply (logged as 499)."""

    status_code = 499
    error_type = "invalid_request_error"
    default_code = "client_closed_request"


class EngineError(HelixFlowError):
    """The inference engine failed for a reason that is not the client's."""

    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"


class ServiceUnavailableError(HelixFlowError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"


class UpstreamError(HelixFlowError):
    """An upstream provider (or a local target) failed; the message names the target.

    ``retryable``: the same target may answer if asked again (connect errors, 408, 429, 5xx);
    ``target_fault``: the failure counts against the target's health and is worth a fallback
    (everything but a request the upstream refused as invalid).
    """

    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        target: str,
        status_code: int = 502,
        upstream_status: int | None = None,
        retryable: bool = True,
        target_fault: bool = True,
        retry_after: float | None = None,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
    ) -> None:
        headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
        super().__init__(message, code=code, param=param, headers=headers)
        self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type
        self.target = target
        self.upstream_status = upstream_status
        self.retryable = retryable
        self.target_fault = target_fault
        self.retry_after = retry_after


class NoTargetAvailableError(HelixFlowError):
    """Every target that could serve the request is unhealthy or over capacity."""

    status_code = 503
    error_type = "server_error"
    default_code = "no_target_available"


# The error class for each status a framework may raise by itself (unknown URL, wrong method).
ERRORS_BY_STATUS: dict[int, type[HelixFlowError]] = {
    cls.status_code: cls
    for cls in (
        InvalidRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        MethodNotAllowedError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
    )
}


class StartupError(Exception):
    """The process cannot start as configured; the message says what to do about it."""


class ConfigurationError(StartupError):
    """A setting is invalid (a database URL, a missing driver, an unsafe combination)."""


class DatabaseUnavailableError(StartupError):
    """The database could not be reached within the configured retries."""


class SchemaOutOfDateError(StartupError):
    """The database schema is behind this release and may not be upgraded automatically."""
