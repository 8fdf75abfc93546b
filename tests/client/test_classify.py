"""``classify``: the one table of what to do about a failed request (direct calls and queue)."""

from __future__ import annotations

import pytest

from sgp_client import (
    APIConnectionError,
    APITimeoutError,
    ClientClosedError,
    DropReason,
    ResponseDecodingError,
    ResponseTooLargeError,
)
from sgp_client._classify import Action, classify
from sgp_client._exceptions import status_error_class


def status(code: int) -> Exception:
    return status_error_class(code)(
        status_code=code, detail="x", request_id=None, method="PUT", url="u"
    )


@pytest.mark.parametrize(
    ("code", "action", "reason"),
    [
        *[(code, Action.RETRY, None) for code in (408, 429, 500, 502, 503, 504, 507, 599)],
        (413, Action.SPLIT, None),
        *[(code, Action.BISECT, None) for code in (400, 409, 422)],
        *[(code, Action.DROP, "unauthorized") for code in (401, 403, 407)],
        (404, Action.DROP, "not_found"),
        # No single item causes these: never bisected, one loud drop.
        *[(code, Action.DROP, "error") for code in (301, 302, 308, 405, 410, 418, 501, 505)],
    ],
)
def test_statuses(code: int, action: Action, reason: str | None) -> None:
    verdict = classify(status(code))
    assert (verdict.action, verdict.reason) == (action, reason)


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (APIConnectionError("reset"), Action.RETRY),
        (APITimeoutError("slow"), Action.RETRY),
        (ResponseDecodingError("corrupt gzip"), Action.RETRY),
        (ResponseTooLargeError("big", limit=1, method="PUT", url="u"), Action.DROP),
        (ClientClosedError("closed"), Action.DROP),
        (ValueError("foreign"), Action.DROP),
    ],
)
def test_other_failures(error: Exception, action: Action) -> None:
    assert classify(error).action is action


def test_every_drop_reason_is_a_queue_drop_reason() -> None:
    known = {value for name, value in vars(DropReason).items() if name.isupper()}
    for code in range(300, 600):
        verdict = classify(status(code))
        if verdict.action is Action.DROP:
            assert verdict.reason in known, code
