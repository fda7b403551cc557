"""Errors: every non-2xx answer becomes an `EarshotError` carrying the server's stable `code`.

The class is chosen by code first, then by HTTP status, so `except NotFoundError` catches both
`unknown_collection` and `unknown_id`, and `except InvalidRequestError` every 400/422 validation code.
"""

from __future__ import annotations

from typing import Any


class EarshotError(Exception):
    """An error answer (or a transport failure, `code == "connection_error"`, `status is None`)."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status or '-'} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        #: the server's `x-request-id`, to find the request in its log
        self.request_id = request_id
        #: seconds from the `Retry-After` header, when the server sent one
        self.retry_after = retry_after
        #: how many attempts were made before giving up (retries included)
        self.attempts = attempts
        self.body = body


class InvalidRequestError(EarshotError):
    """400 / 422: the request was refused as invalid (bad `k`, vector, history, filter, …)."""


class UnauthorizedError(EarshotError):
    """401 `unauthorized`: API keys are configured and none or a wrong one was sent."""


class ForbiddenError(EarshotError):
    """403 `forbidden`: a query key on `/admin/*`, or admin from a non-loopback client."""


class NotFoundError(EarshotError):
    """404: `unknown_collection`, `unknown_id` or `not_found`."""


class UnknownCollectionError(NotFoundError):
    """404 `unknown_collection`."""


class UnknownIdError(NotFoundError):
    """404 `unknown_id`."""


class VersionUnavailableError(EarshotError):
    """409 `version_unavailable`: the pinned `x-earshot-version` is not loaded."""


class PayloadTooLargeError(InvalidRequestError):
    """413 `payload_too_large` / `history_too_large`."""


class ServerError(EarshotError):
    """500 `internal`."""


class UnavailableError(EarshotError):
    """503: `overloaded`, `timeout`, `shard_unavailable`, `not_ready`."""


class OverloadedError(UnavailableError):
    """503 `overloaded`: every slot busy and the queue full; retried by the client."""


class ServerTimeoutError(UnavailableError):
    """503 `timeout`: the request did not finish within the server's `--request-timeout-ms`."""


class ConnectionFailedError(EarshotError):
    """The server could not be reached or dropped the connection (`code == "connection_error"`)."""


_BY_CODE: dict[str, type[EarshotError]] = {
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "unknown_collection": UnknownCollectionError,
    "unknown_id": UnknownIdError,
    "not_found": NotFoundError,
    "version_unavailable": VersionUnavailableError,
    "payload_too_large": PayloadTooLargeError,
    "history_too_large": PayloadTooLargeError,
    "internal": ServerError,
    "overloaded": OverloadedError,
    "timeout": ServerTimeoutError,
}

_BY_STATUS: dict[int, type[EarshotError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: VersionUnavailableError,
    413: PayloadTooLargeError,
    415: InvalidRequestError,
    422: InvalidRequestError,
    503: UnavailableError,
}


def error_class(code: str, status: int | None) -> type[EarshotError]:
    """The exception class for an error code and status."""
    cls = _BY_CODE.get(code)
    if cls is None and status is not None:
        cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else None)
    return cls or EarshotError


def make_error(
    code: str,
    message: str,
    status: int | None,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
    body: Any = None,
) -> EarshotError:
    return error_class(code, status)(
        code, message, status, request_id=request_id, retry_after=retry_after, body=body
    )
