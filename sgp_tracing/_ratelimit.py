"""The tracing layer's logger, and the SDK's one rate-limited logging helper."""

from __future__ import annotations

import logging
from typing import Final

from sgp_client._ratelimit import RateLimitedLog

__all__ = ["RateLimitedLog", "logger"]

logger: Final = logging.getLogger("sgp_tracing")
