"""Typed async client of Scale's SGP spans API, with a coalescing upsert queue.

```python
from sgp_client import AsyncSGPClient, SpanItem

async with AsyncSGPClient() as client:  # SGP_API_KEY, SGP_ACCOUNT_ID, SGP_CLIENT_BASE_URL
    stored = await client.spans.upsert_batch([SpanItem(name="x", trace_id=t, start_timestamp=now)])
```
"""

from ._client import DEFAULT_TIMEOUT, MAX_BATCH_ITEMS, AsyncSGPClient, SpansResource
from ._config import ENVIRONMENTS, Environment
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    InternalServerError,
    InvalidSpanError,
    NotFoundError,
    PermissionDeniedError,
    QueueNotRunningError,
    RateLimitError,
    RequestTooLargeError,
    SGPError,
    UnprocessableEntityError,
)
from ._models import (
    SPAN_STATUSES,
    SPAN_TYPES,
    Identity,
    Span,
    SpanItem,
    SpanStatus,
    SpanType,
    new_span_id,
)
from ._queue import (
    DroppedSpan,
    DropReason,
    QueueConfig,
    QueueStats,
    SpanDroppedError,
    UpsertQueue,
)
from ._record import SpanRecord, encode_content, plain_record, record_of
from ._redact import REDACTED, Redactor, redact_credentials
from ._retry import Backoff

__all__ = [
    "DEFAULT_TIMEOUT",
    "ENVIRONMENTS",
    "MAX_BATCH_ITEMS",
    "REDACTED",
    "SPAN_STATUSES",
    "SPAN_TYPES",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncSGPClient",
    "AuthenticationError",
    "Backoff",
    "BadRequestError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "DropReason",
    "DroppedSpan",
    "Environment",
    "Identity",
    "InternalServerError",
    "InvalidSpanError",
    "NotFoundError",
    "PermissionDeniedError",
    "QueueConfig",
    "QueueNotRunningError",
    "QueueStats",
    "RateLimitError",
    "Redactor",
    "RequestTooLargeError",
    "SGPError",
    "Span",
    "SpanDroppedError",
    "SpanItem",
    "SpanRecord",
    "SpanStatus",
    "SpanType",
    "SpansResource",
    "UnprocessableEntityError",
    "UpsertQueue",
    "encode_content",
    "new_span_id",
    "plain_record",
    "record_of",
    "redact_credentials",
]
