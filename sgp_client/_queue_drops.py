"""What the upsert queue reports when it gives up on items: reasons, records, log lines.

Counting happens in the pending map (so the accounting identity holds in every report);
this module tells the world: one rate-limited WARNING line per reason, one ERROR line per
kind of configuration failure, and the user's ``on_drop`` callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import attrs

from ._exceptions import APIStatusError, SGPError
from ._ratelimit import RateLimitedLog
from ._serialization import loads

if TYPE_CHECKING:
    from ._queue_pending import Entry

__all__ = ["DropReason", "DropReporter", "DroppedSpan", "OnDrop", "SpanDroppedError"]

logger = logging.getLogger("sgp_client.queue")


class DropReason:
    """Why items were dropped; the keys of ``QueueStats.dropped``."""

    QUEUE_FULL: Final = "queue_full"
    SHED_START: Final = "shed_start"
    REJECTED: Final = "rejected"
    RETRIES_EXHAUSTED: Final = "retries_exhausted"
    UNAUTHORIZED: Final = "unauthorized"
    NOT_FOUND: Final = "not_found"
    SHUTDOWN: Final = "shutdown"
    ERROR: Final = "error"


class SpanDroppedError(SGPError):
    """An awaited write (``UpsertQueue.upsert``) was dropped instead of delivered.

    ``reason`` is the ``DropReason``; ``trace_id`` and ``span_id`` name the span; the error
    that caused the drop, if any (the server's answer, the last failed try), is the
    exception's ``__cause__``.
    """

    def __init__(self, reason: str, trace_id: str, span_id: str) -> None:
        super().__init__(f"span {span_id!r} of trace {trace_id!r} was dropped ({reason})")
        self.reason = reason
        self.trace_id = trace_id
        self.span_id = span_id


@attrs.frozen(kw_only=True)
class DroppedSpan:
    """An item the queue gave up on, as handed to ``on_drop``: its key and encoded JSON."""

    trace_id: str
    span_id: str
    completed: bool
    payload: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")

    def to_dict(self) -> dict[str, object]:
        """The item as the JSON object that would have been sent."""
        data: dict[str, object] = loads(self.payload)
        return data


OnDrop = Callable[[Sequence[DroppedSpan], str, BaseException | None], None]


class DropReporter:
    """Logs drops (rate-limited) and calls ``on_drop``; never raises into the queue."""

    def __init__(self, on_drop: OnDrop | None) -> None:
        #: ``callback(items, reason, error)``, called for every drop (may be replaced).
        self.on_drop = on_drop
        self._log = RateLimitedLog(logger, interval=10.0)
        self._loud_errors: set[str] = set()

    def report(self, entries: list[Entry], reason: str, error: BaseException | None) -> None:
        """Tell about ``entries`` dropped for ``reason`` (already counted)."""
        self._log.warning(
            reason,
            "UpsertQueue dropped %d span write(s) (reason: %s)%s",
            len(entries),
            reason,
            f": {error}" if error is not None else "",
            count=len(entries),
        )
        if self.on_drop is None:
            return
        dropped = [
            DroppedSpan(
                trace_id=entry.key[0],
                span_id=entry.key[1],
                completed=entry.completed,
                payload=entry.data,
            )
            for entry in entries
        ]
        try:
            self.on_drop(dropped, reason, error)
        except Exception:
            logger.exception("on_drop callback failed")

    def configuration_error(self, exc: SGPError) -> None:
        """Loud, but once per kind of failure: these do not fix themselves."""
        kind = str(exc.status_code) if isinstance(exc, APIStatusError) else type(exc).__name__
        if kind not in self._loud_errors:
            self._loud_errors.add(kind)
            logger.error(
                "SGP span upload failed and will not be retried (%s): check the API key, the "
                "account id, the base URL and the client's lifecycle; affected spans are dropped",
                exc,
            )
