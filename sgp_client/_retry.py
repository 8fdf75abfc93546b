"""When and how long to wait before trying a failed request again.

Shared by the client's direct calls and by the upsert queue, so both classify failures and
honour ``Retry-After`` the same way (the queue never stacks its retries on the client's).
"""

from __future__ import annotations

import random
import time
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

import attrs

from ._exceptions import (
    APIConnectionError,
    APIStatusError,
)

__all__ = ["TRANSIENT_STATUSES", "Backoff", "is_transient", "parse_retry_after"]

#: Statuses worth another try: the server is busy or a proxy failed, not the request.
TRANSIENT_STATUSES: Final = frozenset({408, 429, 502, 503, 504})


def is_transient(exc: BaseException) -> bool:
    """True for failures that may succeed if the same request is sent again."""
    if isinstance(exc, APIStatusError):
        return exc.status_code in TRANSIENT_STATUSES
    return isinstance(exc, APIConnectionError)


def parse_retry_after(value: str | None, *, cap: float, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date), capped.

    Returns None when the header is absent or unreadable.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always UTC
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of
    ``min(initial * 2**n, maximum)``, or what the server asked for (``Retry-After``).
    """

    initial: float = 0.25
    maximum: float = 8.0
    #: The longest ``Retry-After`` the client will obey; longer asks are capped to this.
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number ``attempt`` (0-based)."""
        # A zero (or already past) Retry-After would turn off backoff and let a fleet retry in
        # a storm: like the official SDK, only a positive wait is taken as the server's word.
        if retry_after is not None and retry_after > 0:
            # The server knows best, but a little jitter keeps a fleet from waking in step.
            return min(retry_after, self.max_retry_after) + random.uniform(0, 0.05)  # noqa: S311
        ceiling = min(self.initial * (2 ** min(attempt, 30)), self.maximum)
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311
