"""Rate-limited log lines: a problem repeated a million times logs a few lines, not a flood.

Shared by the queue's drop reports and the tracing layer's span problems.
"""

from __future__ import annotations

import contextlib
import logging
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most one line per key per ``interval`` seconds, with a count of what it held back.

    Its state is one entry per distinct key; callers use a fixed set of keys (reasons), so it
    stays bounded however many events go wrong.
    """

    __slots__ = ("_interval", "_last", "_logger", "_suppressed")

    def __init__(self, log: logging.Logger, *, interval: float = 10.0) -> None:
        self._logger = log
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object, count: int = 1) -> None:
        """Log ``message % args`` unless ``key`` was logged less than ``interval`` ago.

        ``count`` is how many events this call reports (a drop of a whole batch is one call);
        the next line logged for ``key`` says how many were held back meanwhile.
        """
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + count
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += " (%d similar suppressed since the last line)"
            args = (*args, suppressed)
        # Logging itself must never break the caller (a broken handler, a bad argument).
        with contextlib.suppress(Exception):
            self._logger.warning(message, *args)
