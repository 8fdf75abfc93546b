"""When and how long to wait before trying a failed request again.

Shared by the client's direct calls and by the upsert queue, so both honour ``Retry-After``
the same way (what is retried at all is ``_classify``'s call; the queue never stacks its
retries on the client's).
"""

from __future__ import annotations

import random
import time
from datetime import UTC
from email.utils import parsedate_to_datetime

import attrs

__all__ = ["Backoff", "parse_retry_after"]


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
            if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always UTC
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            # OverflowError: a year no datetime holds (a hostile or broken server).
            return None
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
