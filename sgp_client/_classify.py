"""What to do about a failed request: the one classification direct calls and the queue share.

``classify(exc)`` answers with a ``Verdict``:

- ``RETRY``: the same request may succeed later: connection errors and timeouts (a corrupt
  answer included), 408, 429, 500, 502, 503, 504 and every other 5xx except 501 and 505
  (Not Implemented, HTTP Version Not Supported: the same request gets the same answer).
  500 is retried because it is what a failing server or proxy says; the official client
  retries it too.
- ``SPLIT``: 413, the body is too large; halves may pass.
- ``BISECT``: 400, 409 and 422, the statuses one item of a batch can cause (a NUL byte, a
  parent cycle, an end before its start): the batch is halved to isolate the offenders.
- ``DROP``: everything else, with the queue's drop reason: 401, 403 and 407 ``unauthorized``,
  404 ``not_found``, and ``error`` for the rest (301, 308, 405, 410, another 4xx or 3xx: a
  wrong base URL or a proxy, which no item causes; an answer over ``ResponseLimits``; a
  closed client). These are reported loudly once, never bisected.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

from ._exceptions import APIConnectionError, APIStatusError

__all__ = ["Action", "Verdict", "classify"]


class Action(enum.Enum):
    RETRY = "retry"
    SPLIT = "split"
    BISECT = "bisect"
    DROP = "drop"


@attrs.frozen
class Verdict:
    action: Action
    #: With ``DROP``: the queue's drop reason (a ``DropReason`` value).
    reason: str | None = None


RETRY: Final = Verdict(Action.RETRY)
SPLIT: Final = Verdict(Action.SPLIT)
BISECT: Final = Verdict(Action.BISECT)
_NOT_RETRIED_5XX: Final = frozenset({501, 505})
_BISECTED: Final = frozenset({400, 409, 422})
_RETRIED_4XX: Final = frozenset({408, 429})
# Values of ``DropReason`` (``_queue``), spelled here because the queue imports this module.
_DROPS: Final = {
    401: Verdict(Action.DROP, "unauthorized"),
    403: Verdict(Action.DROP, "unauthorized"),
    407: Verdict(Action.DROP, "unauthorized"),
    404: Verdict(Action.DROP, "not_found"),
}
_ERROR: Final = Verdict(Action.DROP, "error")


def classify(exc: BaseException) -> Verdict:
    """The verdict for a failed request's exception (any exception: foreign ones drop)."""
    if isinstance(exc, APIStatusError):
        status = exc.status_code
        if status >= 500:
            return _ERROR if status in _NOT_RETRIED_5XX else RETRY
        if status in _RETRIED_4XX:
            return RETRY
        if status == 413:
            return SPLIT
        if status in _BISECTED:
            return BISECT
        return _DROPS.get(status, _ERROR)
    if isinstance(exc, APIConnectionError):
        return RETRY
    return _ERROR
