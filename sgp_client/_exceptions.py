"""The one exception tree of the SDK; foreign errors are translated once, at the HTTP seam.

::

    SGPError
    ├── ConfigurationError (ValueError)      missing key/account, unknown environment, bad URL
    ├── InvalidSpanError (ValueError)        a SpanItem the server would reject
    ├── ClientClosedError (RuntimeError)     use of a closed client
    ├── QueueNotRunningError (RuntimeError)  submit to an UpsertQueue outside ``async with``
    └── APIError                             anything the HTTP exchange produced
        ├── ResponseTooLargeError            an answer past ``ResponseLimits`` (not retried)
        ├── APIConnectionError               no usable answer: refused, reset, DNS, protocol
        │   ├── APITimeoutError              the request or the call deadline ran out
        │   └── ResponseDecodingError        a corrupt or unknown content coding
        └── APIStatusError                   the server answered 4xx/5xx
            ├── BadRequestError              400
            ├── AuthenticationError          401
            ├── PermissionDeniedError        403
            ├── NotFoundError                404
            ├── ConflictError                409
            ├── RequestTooLargeError         413
            ├── UnprocessableEntityError     422
            ├── RateLimitError               429
            └── InternalServerError          5xx

No exception, str or repr ever contains the API key: status errors carry the method, the URL,
the status, the server's ``detail`` and its request id, never the request headers.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "InternalServerError",
    "InvalidSpanError",
    "NotFoundError",
    "PermissionDeniedError",
    "QueueNotRunningError",
    "RateLimitError",
    "RequestTooLargeError",
    "ResponseDecodingError",
    "ResponseTooLargeError",
    "SGPError",
    "UnprocessableEntityError",
    "status_error_class",
]


class SGPError(Exception):
    """Base class of every error this SDK raises on purpose."""


class ConfigurationError(SGPError, ValueError):
    """The client cannot be configured as asked (the message names the setting)."""


class InvalidSpanError(SGPError, ValueError):
    """A span item the server would reject; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ClientClosedError(SGPError, RuntimeError):
    """The client was used after ``aclose()`` or after its ``async with`` block ended."""


class QueueNotRunningError(SGPError, RuntimeError):
    """An item was submitted to an UpsertQueue that is not inside its ``async with`` block."""


class APIError(SGPError):
    """The HTTP exchange with SGP failed."""

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class APIConnectionError(APIError):
    """No usable answer: the connection was refused, reset or broke mid-exchange."""


class APITimeoutError(APIConnectionError):
    """The request, or the deadline of the whole call, ran out."""


class ResponseDecodingError(APIConnectionError):
    """The answer's body could not be decoded: a corrupt, truncated or unknown content coding."""


class ResponseTooLargeError(APIError):
    """An answer over ``ResponseLimits`` (before or after decoding); the connection is closed.

    Not retried: the same request would most likely get the same answer.
    """

    def __init__(self, message: str, *, limit: int, method: str, url: str) -> None:
        super().__init__(message, method=method, url=url)
        #: The limit that was passed, in bytes.
        self.limit = limit


class APIStatusError(APIError):
    """The server answered with an error status."""

    def __init__(
        self,
        *,
        status_code: int,
        detail: Any,
        request_id: str | None,
        method: str,
        url: str,
        retry_after: float | None = None,
    ) -> None:
        where = f"{method} {url}"
        rid = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{status_code} from {where}{rid}: {detail}", method=method, url=url)
        self.status_code = status_code
        self.detail = detail
        self.request_id = request_id
        #: Seconds the server asked us to wait (``Retry-After``), already parsed and capped.
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400: malformed request, for example a NUL byte in an id."""


class AuthenticationError(APIStatusError):
    """401: no API key or no account header."""


class PermissionDeniedError(APIStatusError):
    """403: the API key is not valid for this account."""


class NotFoundError(APIStatusError):
    """404: no such span, or a wrong base URL."""


class ConflictError(APIStatusError):
    """409: a parent cycle in the batch, or a parent in another trace."""


class RequestTooLargeError(APIStatusError):
    """413: the request body is over the server's size limit."""


class UnprocessableEntityError(APIStatusError):
    """422: validation failed, for example an end before the start."""


class RateLimitError(APIStatusError):
    """429: slow down; ``retry_after`` says for how long."""


class InternalServerError(APIStatusError):
    """5xx: the server failed; 502, 503 and 504 are transient."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for an error status (``APIStatusError`` for unlisted 4xx)."""
    if status_code >= 500:
        return InternalServerError
    return _STATUS_CLASSES.get(status_code, APIStatusError)
