"""The concurrency limiters on their own (``sgp_client._concurrency``): synchronous and pure, so
fed made-up answers. The queue-level behaviour is in test_queue_concurrency.py."""

from __future__ import annotations

import pytest

from sgp_client import (
    AdaptiveConcurrency,
    APIConnectionError,
    APITimeoutError,
    FixedConcurrency,
)
from sgp_client._concurrency import concurrency_from, outcome_of
from sgp_client._exceptions import APIStatusError

URL = "http://127.0.0.1/public/v5/spans/batch"


def status_error(status: int) -> APIStatusError:
    return APIStatusError(
        status_code=status, detail="made up", request_id=None, method="PUT", url=URL
    )


def answer(limiter: AdaptiveConcurrency, latency: float, count: int = 1) -> None:
    """`count` successful answers after `latency` s, the limit fully in use each time."""
    for _ in range(count):
        limiter.record(latency, None, limiter.limit)


def test_outcome_classifies_overload_signals_and_ignores_the_rest() -> None:
    assert outcome_of(None) == "ok"
    for status in (429, 502, 503, 504):
        assert outcome_of(status_error(status)) == "overload"
    assert outcome_of(APITimeoutError("slow")) == "overload"
    assert outcome_of(APIConnectionError("reset")) == "overload"
    for status in (400, 401, 404, 409, 413, 422, 500):
        assert outcome_of(status_error(status)) == "ignore"
    assert outcome_of(RuntimeError("a bug")) == "ignore"


def test_grows_while_latency_stays_flat_and_the_limit_is_used() -> None:
    limiter = AdaptiveConcurrency(initial=8)
    seen = [limiter.limit]
    for _ in range(80):  # +0.8 an answer
        answer(limiter, 0.150)
        seen.append(limiter.limit)
    assert seen == sorted(seen)  # never shrinks on a flat latency
    assert limiter.limit == 64  # and climbs to its maximum
    # About +6 a round trip of 8 answers at first: quick enough for a burst of seconds.
    fresh = AdaptiveConcurrency(initial=8)
    answer(fresh, 0.150, count=8)
    assert fresh.limit >= 12


def test_does_not_grow_when_the_limit_is_not_used() -> None:
    limiter = AdaptiveConcurrency(initial=8)
    for _ in range(50):
        limiter.record(0.150, None, 3)  # fewer than half of the limit in flight
    assert limiter.limit == 8


def test_a_429_or_503_storm_shrinks_it_to_one_quickly() -> None:
    limiter = AdaptiveConcurrency(initial=64)
    limits = []
    for _ in range(8):
        limiter.record(0.002, status_error(503), 64)
        limits.append(limiter.limit)
    assert limits == [32, 16, 8, 4, 2, 1, 1, 1]
    for error in (status_error(429), APITimeoutError("slow")):
        limiter = AdaptiveConcurrency(initial=8)
        for _ in range(3):
            limiter.record(30.0, error, 8)
        assert limiter.limit == 1


def test_backs_off_on_rising_latency_but_not_below_eight_from_latency_alone() -> None:
    limiter = AdaptiveConcurrency(initial=48)
    answer(limiter, 0.100, count=5)  # the baseline
    peak = limiter.limit
    answer(limiter, 0.600, count=10)
    assert limiter.limit < peak / 2
    limits = []
    for _ in range(30):
        answer(limiter, 0.600)
        limits.append(limiter.limit)
    # Towards headroom / (1 - gradient): 8 at the steepest gradient, the old fixed default.
    assert min(limits) >= 8
    assert limits[-1] < peak / 2


def test_latency_within_tolerance_counts_as_flat() -> None:
    limiter = AdaptiveConcurrency(initial=8)
    answer(limiter, 0.100, count=3)
    before = limiter.limit
    answer(limiter, 0.190, count=10)  # under 2x the baseline: noise, not congestion
    assert limiter.limit > before


def test_a_permanently_slower_server_becomes_the_new_normal() -> None:
    limiter = AdaptiveConcurrency(initial=16)
    answer(limiter, 0.050, count=5)
    limits = []
    for _ in range(400):  # six times slower, for good
        answer(limiter, 0.300)
        limits.append(limiter.limit)
    assert min(limits) < 16  # first taken as congestion
    assert limiter.baseline is not None
    assert limiter.baseline > 0.150  # then learnt as the normal: growing again
    assert limits[-1] > min(limits)


def test_recovers_after_a_storm_once_the_server_answers() -> None:
    limiter = AdaptiveConcurrency(initial=8)
    answer(limiter, 0.150, count=3)
    for _ in range(4):
        limiter.record(0.001, status_error(429), 8)
    assert limiter.limit == 1
    answer(limiter, 0.150, count=20)
    assert limiter.limit > 8


def test_respects_its_bounds() -> None:
    limiter = AdaptiveConcurrency(initial=3, minimum=2, maximum=5)
    answer(limiter, 0.010, count=100)
    assert limiter.limit == 5
    for _ in range(10):
        limiter.record(0.010, status_error(503), 5)
    assert limiter.limit == 2
    answer(limiter, 5.0, count=100)  # however slow
    assert 2 <= limiter.limit <= 5


def test_ignored_failures_change_nothing() -> None:
    limiter = AdaptiveConcurrency(initial=8)
    for status in (400, 409, 413, 422):
        limiter.record(10.0, status_error(status), 8)
    assert limiter.limit == 8
    assert limiter.baseline is None


@pytest.mark.parametrize(
    "settings",
    [
        {"minimum": 0},
        {"minimum": 5, "maximum": 4},
        {"initial": 100},
        {"tolerance": 0.5},
        {"headroom": -1.0},
        {"smoothing": 0.0},
        {"backoff": 1.0},
    ],
)
def test_rejects_settings_that_make_no_sense(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        AdaptiveConcurrency(**settings)  # type: ignore[arg-type]


def test_concurrency_from_the_queue_setting() -> None:
    assert isinstance(concurrency_from("adaptive"), AdaptiveConcurrency)
    fixed = concurrency_from(3)
    assert isinstance(fixed, FixedConcurrency)
    assert fixed.limit == 3
    fixed.record(10.0, status_error(503), 3)
    assert fixed.limit == 3  # a fixed limit stays fixed
    mine = AdaptiveConcurrency(maximum=4)
    assert concurrency_from(mine) is mine
    with pytest.raises(ValueError, match="max_in_flight"):
        concurrency_from(0)
    with pytest.raises(ValueError, match="adaptive"):
        concurrency_from("fast")
    with pytest.raises(TypeError):
        concurrency_from(True)


@pytest.mark.parametrize("value", [8.0, None, object(), [4]])
def test_a_setting_that_is_no_limiter_is_refused_when_the_queue_is_built(value: object) -> None:
    # Refused by the queue's config, with a TypeError naming the setting: never an
    # AttributeError inside the running dispatcher, which would cancel the caller's block.
    from sgp_client._queue_config import QueueConfig

    with pytest.raises(TypeError, match="max_in_flight"):
        concurrency_from(value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_in_flight"):
        QueueConfig(max_in_flight=value)  # type: ignore[arg-type]
