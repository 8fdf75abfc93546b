"""The retry policy's pure parts: Retry-After parsing, backoff delays, what counts as transient."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from sgp_client import (
    APIConnectionError,
    APITimeoutError,
    Backoff,
    ClientClosedError,
    InvalidSpanError,
    SGPError,
)
from sgp_client._classify import Action, classify
from sgp_client._exceptions import status_error_class
from sgp_client._retry import parse_retry_after


def is_transient(exc: BaseException) -> bool:
    return classify(exc).action is Action.RETRY


NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("1", 1.0),
        (" 2 ", 2.0),
        ("1.5", 1.5),
        ("-3", 0.0),  # never a negative sleep
        ("120", 60.0),  # capped
        ("inf", 60.0),
    ],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, cap=60.0) == expected


def test_retry_after_http_date() -> None:
    when = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=30)
    assert parse_retry_after(format_datetime(when, usegmt=True), cap=60.0, now=NOW) == 30.0


def test_retry_after_http_date_capped_and_past() -> None:
    later = datetime.fromtimestamp(NOW, UTC) + timedelta(hours=1)
    earlier = datetime.fromtimestamp(NOW, UTC) - timedelta(hours=1)
    assert parse_retry_after(format_datetime(later, usegmt=True), cap=5.0, now=NOW) == 5.0
    assert parse_retry_after(format_datetime(earlier, usegmt=True), cap=5.0, now=NOW) == 0.0


def test_retry_after_http_date_against_the_real_clock() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=20)
    seconds = parse_retry_after(format_datetime(soon, usegmt=True), cap=60.0)
    assert seconds is not None
    assert 0.0 < seconds <= 20.0


def test_retry_after_http_date_without_zone_is_utc() -> None:
    # RFC 5322 "-0000" means UTC with no source zone; the stdlib parses it as a naive datetime.
    assert parse_retry_after("Sat, 01 Mar 2025 12:00:10 -0000", cap=60.0, now=NOW) == 10.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "Wed, 99 Foo 2025"])
def test_retry_after_unreadable(value: str | None) -> None:
    assert parse_retry_after(value, cap=60.0) is None


def test_backoff_grows_exponentially_with_jitter_and_a_ceiling() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0)
    for attempt in range(12):
        ceiling = min(0.5 * 2**attempt, 8.0)
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered, so a fleet does not retry in step
    assert backoff.delay(10_000) <= 8.0  # no overflow for absurd attempt numbers


def test_backoff_follows_retry_after_with_a_little_jitter() -> None:
    backoff = Backoff(max_retry_after=10.0)
    for _ in range(100):
        assert 3.0 <= backoff.delay(0, retry_after=3.0) <= 3.1
        assert 10.0 <= backoff.delay(5, retry_after=500.0) <= 10.1
        # A zero wait is no instruction: the exponential backoff applies (no retry storm).
        assert 0.125 <= backoff.delay(0, retry_after=0.0) <= 0.25


def test_backoff_defaults_are_explainable() -> None:
    backoff = Backoff()
    assert (backoff.initial, backoff.maximum, backoff.max_retry_after) == (0.25, 8.0, 60.0)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_transient_statuses(status: int) -> None:
    exc = status_error_class(status)(
        status_code=status, detail="x", request_id=None, method="PUT", url="u"
    )
    assert is_transient(exc)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 501, 505])
def test_permanent_statuses(status: int) -> None:
    exc = status_error_class(status)(
        status_code=status, detail="x", request_id=None, method="PUT", url="u"
    )
    assert not is_transient(exc)


def test_transient_failures_without_status() -> None:
    assert is_transient(APIConnectionError("reset"))
    assert is_transient(APITimeoutError("slow"))
    assert not is_transient(ClientClosedError("closed"))
    assert not is_transient(InvalidSpanError("id", "bad"))
    assert not is_transient(SGPError("other"))
    assert not is_transient(ValueError("foreign"))
