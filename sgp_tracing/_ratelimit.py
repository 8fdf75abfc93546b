"""Rate-limited warnings: a span problem repeated a million times logs a few lines, not a flood."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Final

__all__ = ["RateLimitedLog", "logger"]

logger: Final = logging.getLogger("sgp_tracing")


class RateLimitedLog:
    """At most one warning per reason per ``interval`` seconds, with a count of the rest.

    Its state is one entry per distinct reason; callers use a fixed set of reasons, so it
    stays bounded however many events go wrong.
    """

    __slots__ = ("_interval", "_last", "_logger", "_suppressed")

    def __init__(self, log: logging.Logger = logger, *, interval: float = 10.0) -> None:
        self._logger = log
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, reason: str, message: str, *args: object) -> None:
        """Log ``message % args`` unless ``reason`` was logged less than ``interval`` ago."""
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        # Logging itself must never break tracing (a broken handler, a bad format argument).
        with contextlib.suppress(Exception):
            self._logger.warning(message, *args)
